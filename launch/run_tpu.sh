#!/usr/bin/env bash
# Runs on every TPU worker (called by launch/tpu_pod.sh): make the venv once, then train with
# jax.distributed.initialize() enabled (INFINITY_JAX_DISTRIBUTED=1).
#
#   bash launch/run_tpu.sh --config configs/infinity.py:size=2b --workdir gs://bucket/run
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$HOME/.venvs/infinity-jax}
if [[ ! -x $VENV/bin/python ]]; then
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "jax[tpu]" -e . ${EXTRA_PIP:-}
else
  "$VENV/bin/pip" install -q --no-deps -e .  # pick up the new code only
fi
export INFINITY_JAX_DISTRIBUTED=1
exec "$VENV/bin/python" -m infinity_jax.train "$@"
