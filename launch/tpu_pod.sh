#!/usr/bin/env bash
# Runs a config on every worker of a Cloud TPU VM pod slice; the workdir should be a bucket.
#   bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]
# e.g. bash launch/tpu_pod.sh my-v4-32 us-central2-b configs/vit_b16_dropout.py gs://bkt/run1
set -euo pipefail
tpu=$1 zone=$2 config=$3 workdir=$4; shift 4
repo=${RICHFT_REPO:-$(git config --get remote.origin.url)}
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e
  [ -d richft_jax ] || git clone $repo richft_jax
  cd richft_jax && git pull --ff-only
  python3 -m pip install -q -e '.[tpu]'
  python3 -m richft_jax.main --distributed --config=$config --workdir=$workdir $*
"
