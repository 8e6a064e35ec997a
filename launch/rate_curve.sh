#!/usr/bin/env bash
# The paper's Figure 3 on the embedded benchmark, and its from-scratch contrast: OOD and ID
# accuracy against the penultimate dropout rate (0, 0.5, 0.8, 0.9, 0.95, 0.99) per test domain
# and seed, then the report (tables.md and OUT/report/dropout_rate_digits_domains.png: one
# curve per backbone, mean ± standard error over seeds).
# Parts: `pretrained` = the shipped backbone fine-tuned (rate 0: configs/demo_erm.py,
# the others: configs/demo.py with dropout_rate set); `scratch` = the same from random
# initialisation with BatchNorm trained (configs/demo_scratch.py; rate 0: its `erm` argument),
# the paper's appendix setting where high rates hurt. Hyper-parameters are the demo's (no
# learning-rate grid); no moving average and one checkpoint kept (plus the selected one), as
# demo_grid.sh. Seeds run one after another, each with every part before the next seed starts;
# finished runs are skipped, so rerunning resumes.
#   [JOBS=N] bash launch/rate_curve.sh [OUT_DIR] [SEEDS] [DOMAINS] [PARTS] [SCRATCH_SEEDS]
# BACKBONE=FILE: the `pretrained` part fine-tunes this pinned backbone file instead of the
# configs' shipped one (launch/sweep.py --set=pretrained.path=FILE; `scratch` has none).
# defaults: workdirs/rate_curve, 0,1,2, mnist,mnist_m,digits,syn, pretrained,scratch, the first
# two of SEEDS. JOBS=N runs N at once, each pinned to its share of the CPUs (launch/sweep.py
# --jobs; JOBS=2 on 2 cores finishes more runs an hour, see docs/benchmarks.md). MODE=print
# lists the runs' commands (launch/sweep.py --mode=print), runs nothing and writes no report.
# Cost: 6 rates × seeds × test domains runs per part, a run ≈ 2 min on 2 idle cores (the demo's
# 900 steps): by default pretrained 6 × 3 × 4 = 72 runs ≈ 2.4 h, scratch 6 × 2 × 4 = 48 runs
# ≈ 1.6 h; 120 runs ≈ 4 h in all.
set -euo pipefail
out=${1:-workdirs/rate_curve}
seeds=${2:-0,1,2}
domains=${3:-mnist,mnist_m,digits,syn}
parts=${4:-pretrained,scratch}
IFS=, read -ra all_seeds <<<"$seeds"
scratch_seeds=${5:-$(IFS=,; echo "${all_seeds[*]:0:2}")}
mode=${MODE:-run}
rates=0.5,0.8,0.9,0.95,0.99 # Rate 0 is each part's ERM config.
fixed=(--grid="data.test_domains=$domains" --grid=moving_average_start=None
  --grid=keep_checkpoints=1 --mode="$mode" --jobs="${JOBS:-1}")
backbone=()
if [[ -n ${BACKBONE:-} ]]; then backbone=(--set="pretrained.path=$(realpath "$BACKBONE")"); fi
# One part's runs for one seed: its ERM config (rate 0), then its dropout config at each rate;
# then any extra sweep flags (the pretrained part's backbone).
part() {
  local erm=$1 dropout=$2 seed=$3
  shift 3
  python launch/sweep.py --out="$out" --config="$erm" "${fixed[@]}" --seeds="$seed" "$@"
  python launch/sweep.py --out="$out" --config="$dropout" --grid="dropout_rate=$rates" \
    "${fixed[@]}" --seeds="$seed" "$@"
}
IFS=, read -ra scratch_list <<<"$scratch_seeds"
order=$(printf '%s\n' "${all_seeds[@]}" "${scratch_list[@]}" | awk '!seen[$0]++')
for seed in $order; do
  if [[ ,$parts, == *,pretrained,* && ,$seeds, == *,$seed,* ]]; then
    part configs/demo_erm.py configs/demo.py "$seed" "${backbone[@]}"
  fi
  if [[ ,$parts, == *,scratch,* && ,$scratch_seeds, == *,$seed,* ]]; then
    part configs/demo_scratch.py:erm configs/demo_scratch.py "$seed"
  fi
done
if [[ $mode == run ]]; then
  python -m richft_jax.report "$out" --out "$out/report"
fi
