#!/usr/bin/env bash
# The embedded hyper-parameter and dropout-rate grid behind the README's Figure-2 cloud and
# Figure-3 rate curve: penultimate dropout at rates 0 (ERM), 0.5, 0.9 and 0.99 × learning
# rates 1e-3 and 3e-3 (the demo's) × the four test domains, per seed; then, per (rate 0 / 0.9,
# test domain, seed), the across-runs weight average and ensemble of the two learning rates'
# selected checkpoints; then the report (tables, cloud, rate curve).
# Parts: `main` = rates 0 and 0.9 and their across-runs combinations (the clouds), `rates` =
# rates 0.5 and 0.99 (the rate curve's other points) on RATE_DOMAINS (the report compares the
# rates on the test domains they all have). Seeds run one after another, each with every part
# before the next seed starts; finished runs are skipped, so rerunning resumes.
#   bash launch/demo_grid.sh [OUT_DIR] [SEEDS] [PARTS] [RATE_DOMAINS]
# defaults: workdirs/demo_grid, 0,1, main,rates, mnist,mnist_m,digits,syn
set -euo pipefail
out=${1:-workdirs/demo_grid}
seeds=${2:-0,1}
parts=${3:-main,rates}
rate_domains=${4:-mnist,mnist_m,digits,syn}
domains=(mnist mnist_m digits syn)
lrs=(1e-3 3e-3)
grid=(--grid="data.test_domains=$(IFS=,; echo "${domains[*]}")" --grid="optim.lr=$(IFS=,; echo "${lrs[*]}")")
# No along-run moving average and one checkpoint kept (plus the selected one): the grid
# compares rates and settings; the main table has the along-run combinations.
fixed=(--grid=moving_average_start=None --grid=keep_checkpoints=1)
# The two learning rates' runs of one (config, test domain, seed) combined: their selected
# checkpoints' uniform soup and ensemble, rows "<method>+across_lr_<combination>".
across_runs() {
  local config=$1 method=$2 seed=$3 domain runs lr combined
  for domain in "${domains[@]}"; do
    runs=()
    for lr in "${lrs[@]}"; do
      runs+=("$out/$config/test_domains=$domain/keep_checkpoints=1/moving_average_start=None/lr=$lr/seed$seed")
    done
    combined="$out/across_runs/$config/test_domains=$domain/seed$seed"
    [[ -f $combined/summary.json ]] && continue
    python -m richft_jax.main --config=configs/combine.py --workdir="$combined" \
      --config.checkpoints="$(IFS=,; echo "${runs[*]}")" \
      --config.combinations=uniform_soup,ensemble_sum_logits \
      --config.method_prefix="$method+across_lr_"
  done
}
for seed in ${seeds//,/ }; do
  if [[ ,$parts, == *,main,* ]]; then
    python launch/sweep.py --out="$out" --config=configs/demo_erm.py --config=configs/demo.py \
      "${grid[@]}" "${fixed[@]}" --seeds="$seed"
    across_runs demo_erm erm "$seed"
    across_runs demo very_large_dropout "$seed"
  fi
  if [[ ,$parts, == *,rates,* ]]; then
    python launch/sweep.py --out="$out" --config=configs/demo.py --grid=dropout_rate=0.5,0.99 \
      --grid="data.test_domains=$rate_domains" --grid="optim.lr=$(IFS=,; echo "${lrs[*]}")" \
      "${fixed[@]}" --seeds="$seed"
  fi
done
python -m richft_jax.report "$out" --out "$out/report"
