#!/usr/bin/env bash
# Runs a config on every worker of a Cloud TPU VM pod slice; the workdir is a bucket URL.
#   bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG gs://BUCKET/RUN [--config.x=y ...]
# e.g. bash launch/tpu_pod.sh my-v4-32 us-central2-b configs/vit_b16_dropout.py:dataset=pacs,test_domain=0 \
#        gs://bkt/runs/vit_drop_pacs_0 --config.data.data_dir=gs://bkt/tfds
# Creates the slice first if ACCELERATOR_TYPE is set (e.g. v4-32; TPU_VERSION defaults to
# tpu-ubuntu2204-base). Every worker clones/updates the repo ($RICHFT_REPO, default this
# checkout's origin), installs it and starts the same command; jax.distributed.initialize()
# finds the other workers by itself.
#
# The gs:// workdir is passed as is: Orbax writes checkpoints to the bucket natively, results
# and summary go through etils.epath, and one run per workdir is a lease object
# (workdir/.lease.json) instead of a file lock. No gcsfuse.
# Weights by name (the paper configs' default, e.g. vit_b16): each worker downloads them once
# into its own $RICHFT_CACHE (~/.cache/richft_jax; from Google's public bucket, fast inside
# GCP); or copy them to a bucket once and pass --config.pretrained.path=gs://BUCKET/FILE.
# Datasets: prepare once, from any machine with the credentials, into the bucket
#   python -m richft_jax.data.prepare --dataset=pacs --data_dir=gs://BUCKET/tfds
# and give every worker --config.data.data_dir=gs://BUCKET/tfds (TFDS reads it from there).
set -euo pipefail
tpu=$1 zone=$2 config=$3 workdir=$4; shift 4
repo=${RICHFT_REPO:-$(git config --get remote.origin.url)}
if [ -n "${ACCELERATOR_TYPE:-}" ]; then
  gcloud compute tpus tpu-vm create "$tpu" --zone="$zone" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="${TPU_VERSION:-tpu-ubuntu2204-base}"
fi
args=$(printf ' %q' --distributed "--config=$config" "--workdir=$workdir" "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e
  [ -d richft_jax ] || git clone $(printf %q "$repo") richft_jax
  cd richft_jax && git pull --ff-only
  python3 -m pip install -q -e '.[tpu]'
  python3 -m richft_jax.main$args
"
