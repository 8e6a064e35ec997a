#!/usr/bin/env bash
# The embedded comparison table: very-large dropout vs ERM on each of the four test domains,
# run locally one after another (finished runs are skipped), then collected into tables.
#   bash launch/demo_table.sh [OUT_DIR] [SEEDS...]
set -euo pipefail
out=${1:-workdirs/demo_table}; shift || true
seeds=${*:-0}
for seed in $seeds; do
  for domain in mnist mnist_m digits syn; do
    for config in demo demo_erm; do
      workdir="$out/$config/$domain/seed$seed"
      [ -f "$workdir/summary.json" ] && continue
      python -m richft_jax.main --config="configs/$config.py" --workdir="$workdir" \
        --config.data.test_domains="$domain" --config.seed="$seed" --config.trial_seed="$seed"
    done
  done
done
python -m richft_jax.report "$out" --out "$out/report"
