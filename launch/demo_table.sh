#!/usr/bin/env bash
# The embedded comparison table (README "Embedded benchmark"), 3 seeds × the four test domains:
# 1. ERM and very-large dropout, each run keeping its checkpoints for the along-run ensembles
#    and soups and a moving average of its weights;
# 2. the companion methods: LP-FT (its step 0 is the LP row), early and late dropout,
#    regularized self-labeling without and with 20% symmetric label noise;
# 3. ERM with the same label noise (the noisy row's comparison);
# then everything collected into tables + the ID-vs-OOD plot. Finished runs and combinations
# are skipped, so rerunning resumes an interrupted sweep.
#   [JOBS=N] [BACKBONE=FILE] bash launch/demo_table.sh [OUT_DIR] [SEEDS] [PARTS]
# BACKBONE: fine-tune every run from this pinned backbone file (launch/sweep.py
# --set=pretrained.path=FILE) instead of the configs' shipped one.
# defaults: workdirs/demo_table, 0,1,2, main,companions,noise_baseline. JOBS=N runs N at once,
# each pinned to its share of the CPUs (launch/sweep.py --jobs; JOBS=2 on 2 cores finishes more
# runs an hour, see docs/benchmarks.md).
set -euo pipefail
out=${1:-workdirs/demo_table}
seeds=${2:-0,1,2}
parts=${3:-main,companions,noise_baseline}
domains=data.test_domains=mnist,mnist_m,digits,syn
jobs=--jobs="${JOBS:-1}"
backbone=()
if [[ -n ${BACKBONE:-} ]]; then backbone=(--set="pretrained.path=$(realpath "$BACKBONE")"); fi
if [[ ,$parts, == *,main,* ]]; then
  python launch/sweep.py --out="$out" --config=configs/demo_erm.py --config=configs/demo.py \
    --grid="$domains" --seeds="$seeds" "$jobs" "${backbone[@]}" \
    --along-run=uniform_soup,greedy_soup,ensemble_sum_logits
fi
if [[ ,$parts, == *,companions,* ]]; then
  python launch/sweep.py --out="$out" --config=configs/demo_lpft.py \
    --config=configs/demo_early_dropout.py --config=configs/demo_late_dropout.py \
    --config=configs/demo_rsl.py --config=configs/demo_rsl.py:noisy \
    --grid="$domains" --seeds="$seeds" "$jobs" "${backbone[@]}"
fi
if [[ ,$parts, == *,noise_baseline,* ]]; then
  python launch/sweep.py --out="$out" --config=configs/demo_rsl.py:noisy,erm \
    --grid="$domains" --seeds="$seeds" "$jobs" "${backbone[@]}"
fi
python -m richft_jax.report "$out" --out "$out/report"
