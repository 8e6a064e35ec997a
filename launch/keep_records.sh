#!/usr/bin/env bash
# Copies the records of a sweep's finished runs (results.jsonl, summary.json, config.json of
# every directory holding a summary.json; no checkpoints or event files) into DEST, keeping the
# tree, so `python -m richft_jax.report DEST` rebuilds the tables without the workdirs (which
# hold the checkpoints and are not committed). Unfinished runs are left out.
#   bash launch/keep_records.sh SWEEP_DIR DEST
set -euo pipefail
src=${1:?usage: keep_records.sh SWEEP_DIR DEST}
dest=$(realpath -m "${2:?usage: keep_records.sh SWEEP_DIR DEST}")
cd "$src"
find . -name summary.json -not -path "./report/*" -print0 |
  while IFS= read -r -d '' s; do
    run=$(dirname "$s")
    for f in results.jsonl summary.json config.json; do
      if [[ -f $run/$f ]]; then install -D -m 644 "$run/$f" "$dest/$run/$f"; fi
    done
  done
echo "kept the records of $(find "$dest" -name summary.json | wc -l) finished runs in $dest"
