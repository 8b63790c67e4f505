#!/usr/bin/env bash
# N processes on this machine, CPU only, joined with jax.distributed on localhost (gloo collectives):
# a rehearsal of a multi-host run without accelerators (what tests/training/test_train_multiprocess.py
# checks). Each process gets DEVICES simulated CPU devices.
#
#   NPROC=2 DEVICES=1 launch/local_multiprocess.sh --config configs/infinity.py:size=tiny,runlocal=True \
#       --workdir /tmp/mp
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-2}
DEVICES=${DEVICES:-1}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < NPROC; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES" \
  INFINITY_JAX_DISTRIBUTED=1 JAX_COORDINATOR_ADDRESS="localhost:$PORT" JAX_NUM_PROCESSES=$NPROC JAX_PROCESS_ID=$i \
    "${PYTHON:-python}" -m infinity_jax.train "$@" > >(sed "s/^/[$i] /") 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
