#!/usr/bin/env bash
# Measures a candidate demo backbone the way the shipped one is measured, so that backbones are
# chosen by their representation and not by whether very-large dropout wins (issue 16):
#  1. letters (source) accuracy and the linear probe per digits domain
#     (analysis.backbone_richness, OUT/probes.json);
#  2. the demo's ERM and very-large-dropout runs fine-tuned from it on every test domain, for
#     SEEDS (launch/sweep.py --set=pretrained.path=BACKBONE: the demo configs otherwise);
#  3. per test domain and seed, their Taylor-model agreement and feature distortion from θ0
#     (OUT/richness_seed{S}_{D}.json, 256 examples a split, as the shipped backbone's records);
#  4. the report of the runs (OUT/report).
#   [JOBS=N] bash launch/backbone_candidate.sh BACKBONE OUT [SEEDS]
# BACKBONE: a pinned .msgpack with its .json beside it (launch/pin_backbone.py --out=FILE) or a
# finished demo_pretrain run directory. SEEDS: default 0 (8 runs, ≈ 15 min with JOBS=2 on 2 cores).
# Finished runs and records are skipped, so rerunning resumes.
set -euo pipefail
backbone=$1
out=$2
seeds=${3:-0}
domains=(mnist mnist_m digits syn)
richness=(python -m richft_jax.analysis.backbone_richness --backbone="$backbone")
mkdir -p "$out"
if [[ ! -f $out/probes.json ]]; then
  "${richness[@]}" --out="$out/probes.json"
fi
python launch/sweep.py --out="$out" --config=configs/demo_erm.py --config=configs/demo.py \
  --grid="data.test_domains=$(IFS=,; echo "${domains[*]}")" --seeds="$seeds" \
  --set="pretrained.path=$backbone" --jobs="${JOBS:-1}"
IFS=, read -ra seed_list <<<"$seeds"
for seed in "${seed_list[@]}"; do
  for d in "${domains[@]}"; do
    record=$out/richness_seed${seed}_$d.json
    if [[ ! -f $record ]]; then
      "${richness[@]}" --noprobe --max_examples=256 --out="$record" \
        --runs="$out/demo_erm/test_domains=$d/seed$seed,$out/demo/test_domains=$d/seed$seed"
    fi
  done
done
python -m richft_jax.report "$out" --out "$out/report"
