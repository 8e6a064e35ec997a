#!/usr/bin/env bash
# The embedded comparison table (README "Embedded benchmark"): ERM and very-large dropout on
# each of the four test domains × 3 seeds, each run keeping its checkpoints for the along-run
# ensembles and soups and a moving average of its weights, then collected into tables + plot.
# Finished runs and combinations are skipped, so rerunning resumes an interrupted sweep.
#   bash launch/demo_table.sh [OUT_DIR] [SEEDS]      # defaults: workdirs/demo_table 0,1,2
set -euo pipefail
out=${1:-workdirs/demo_table}
seeds=${2:-0,1,2}
python launch/sweep.py --out="$out" --config=configs/demo_erm.py --config=configs/demo.py \
  --grid=data.test_domains=mnist,mnist_m,digits,syn --seeds="$seeds" \
  --along-run=uniform_soup,greedy_soup,ensemble_sum_logits
python -m richft_jax.report "$out" --out "$out/report"
