#!/usr/bin/env bash
# The GPU benchmark in one command (benchmarks/gpu.py): ResNet-50 and ViT-B/16 train steps,
# JAX against torch.compile and torch eager on the same GPU, MFU, peak memory, the demo.
#
#   bash benchmarks/gpu.sh --out_dir="$OUT"     # GPU machine, under 5 minutes (--budget_s)
#   bash benchmarks/gpu.sh --tiny --out_dir=DIR # any machine: tiny shapes on the CPU
#   bash benchmarks/gpu.sh --dry_run            # the plan; --help: every flag
#
# Writes OUT_DIR/gpu_benchmark.json and OUT_DIR/gpu_benchmark.md (default OUT_DIR:
# docs/benchmarks). Uses the repository's .venv when there is one, else $PYTHON / python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec "$PYTHON" -m benchmarks.gpu "$@"
