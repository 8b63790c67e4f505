#!/usr/bin/env bash
# Train on all GPUs of one machine: a single process drives every local GPU (JAX's usual
# single-host mode); no jax.distributed needed. The mesh comes from the config (default fsdp=-1 over
# all GPUs); override e.g. --config.mesh.data=2 --config.mesh.fsdp=4.
#
#   launch/gpu_single_host.sh --config configs/infinity.py:size=layer12,pn=0.06M \
#       --config.data.path=/data/shards --config.tokenizer.checkpoint=/w/infinity_vae_d32_rdn_short.pth \
#       --config.text.t5_path=/w/flan-t5-xl --workdir /runs/layer12
#
# Environment: CUDA_VISIBLE_DEVICES selects GPUs; PYTHON (default python) is the interpreter of an
# environment with `pip install -e . "jax[cuda12]"`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Let XLA use most of each GPU's memory up front, and overlap collectives with compute.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
exec "${PYTHON:-python}" -m infinity_jax.train "$@"
