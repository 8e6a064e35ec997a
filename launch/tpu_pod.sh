#!/usr/bin/env bash
# Runs a config on every worker of a Cloud TPU VM pod slice; the workdir is on a bucket.
#   bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG gs://BUCKET/RUN [--config.x=y ...]
# e.g. bash launch/tpu_pod.sh my-v4-32 us-central2-b configs/demo.py gs://bkt/run1
# Creates the slice first if ACCELERATOR_TYPE is set (e.g. v4-32; TPU_VERSION defaults to
# tpu-ubuntu2204-base). Every worker clones/updates the repo ($RICHFT_REPO, default this
# checkout's origin), installs it, mounts the bucket with gcsfuse (the run writes its
# workdir through the file system: results, locks and Orbax checkpoints) and starts the same
# command; jax.distributed.initialize() finds the other workers by itself.
set -euo pipefail
tpu=$1 zone=$2 config=$3 workdir=$4; shift 4
repo=${RICHFT_REPO:-$(git config --get remote.origin.url)}
if [ -n "${ACCELERATOR_TYPE:-}" ]; then
  gcloud compute tpus tpu-vm create "$tpu" --zone="$zone" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="${TPU_VERSION:-tpu-ubuntu2204-base}"
fi
case $workdir in
  gs://*) bucket=${workdir#gs://}; bucket=${bucket%%/*}; local_workdir=/tmp/gcs/$bucket/${workdir#gs://$bucket/} ;;
  *) bucket=""; local_workdir=$workdir ;;
esac
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e
  if [ -n '$bucket' ] && ! mountpoint -q /tmp/gcs/$bucket; then
    mkdir -p /tmp/gcs/$bucket && gcsfuse --implicit-dirs $bucket /tmp/gcs/$bucket
  fi
  [ -d richft_jax ] || git clone $repo richft_jax
  cd richft_jax && git pull --ff-only
  python3 -m pip install -q -e '.[tpu]'
  python3 -m richft_jax.main --distributed --config=$config --workdir=$local_workdir $extra
"
