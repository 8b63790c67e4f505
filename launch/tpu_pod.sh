#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: copy this checkout to every worker, then run the same command on
# all of them at once (one process per host; jax.distributed.initialize() finds the others through the
# TPU metadata server).
#
#   launch/tpu_pod.sh NAME ZONE [PROJECT] -- --config configs/infinity.py:size=2b,pn=0.06M \
#       --config.data.path=gs://bucket/shards --workdir gs://bucket/runs/2b
#
# Environment: PYTHON (default python3) for the remote venv; EXTRA_PIP (extra packages, e.g. gcsfs).
# Re-running the same command resumes from the latest checkpoint in --workdir.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,12p' "$0"
  exit 2
fi
NAME=$1; ZONE=$2; shift 2
PROJECT_ARGS=()
if [[ $1 != "--" ]]; then PROJECT_ARGS=(--project "$1"); shift; fi
[[ ${1:-} == "--" ]] && shift
TRAIN_ARGS=$(printf '%q ' "$@")

HERE=$(cd "$(dirname "$0")/.." && pwd)
TARBALL=$(mktemp /tmp/infinity-jax.XXXXXX.tar.gz)
trap 'rm -f "$TARBALL"' EXIT
# the code only: no checkpoints, venvs or caches
tar -C "$HERE" --exclude=.git --exclude='*.egg-info' --exclude=__pycache__ --exclude=.venv \
    -czf "$TARBALL" infinity_jax configs launch setup.py README.md

gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME":~/infinity-jax.tar.gz --zone "$ZONE" "${PROJECT_ARGS[@]}" --worker=all
gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" "${PROJECT_ARGS[@]}" --worker=all --command \
  "mkdir -p ~/infinity-jax && tar -C ~/infinity-jax -xzf ~/infinity-jax.tar.gz && \
   cd ~/infinity-jax && PYTHON=${PYTHON:-python3} EXTRA_PIP='${EXTRA_PIP:-}' bash launch/run_tpu.sh $TRAIN_ARGS"
