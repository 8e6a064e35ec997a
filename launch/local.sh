#!/usr/bin/env bash
# One host, all its devices (CPU, a GPU, or a TPU VM):
#   bash launch/local.sh CONFIG WORKDIR [--config.x=y ...]
set -euo pipefail
config=$1 workdir=$2; shift 2
exec python -m richft_jax.main --config="$config" --workdir="$workdir" "$@"
