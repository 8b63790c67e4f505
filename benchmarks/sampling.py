"""Sampling speed: seconds per batch with the KV-cache sampler, compile time apart, peak memory.

  python benchmarks/sampling.py                 # official-tiny, B=2, 7 scales (256x256), CFG 4
  python benchmarks/sampling.py --size 2b --pn 1M --batch 1 --dtype bfloat16   # on an accelerator

The official PyTorch code takes about 0.63 s for the official-tiny run on a 2-core CPU
(transformer sampling; its VAE decode alone takes 0.71 s). A model size other than
official-tiny uses random weights (speed does not depend on the values).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infinity_jax.sampling.sampler import Sampler, SamplingConfig
from infinity_jax.schedules import get_schedule
from infinity_jax.tokenizer.vae import BSQVAE, VAEConfig, jit_decode
from infinity_jax.transformer.config import InfinityConfig, size_config
from infinity_jax.transformer.convert import load
from infinity_jax.transformer.model import Infinity

FIXTURE = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official-tiny"


def peak_memory() -> str:
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return f"device peak {stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
    return f"host peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def build(size: str, dtype: str):
    if size == "official-tiny":
        man = json.loads((FIXTURE / "manifest.json").read_text())
        cfg = InfinityConfig.from_official(man["config"]["infinity"], dtype=dtype)
        model = load(str(FIXTURE / "weights_infinity.npz"), cfg)
        from infinity_jax.tokenizer.convert import from_official
        from infinity_jax.state_dict import load_state_dict

        vae = from_official(load_state_dict(FIXTURE / "weights_vae.npz"), VAEConfig.from_official(man["config"]["vae"]))
        return model, vae
    cfg = size_config(size, dtype=dtype)
    model = Infinity(cfg, rngs=nnx.Rngs(0))
    vae = BSQVAE(VAEConfig.official(cfg.codebook_dim, cfg.apply_spatial_patchify), rngs=nnx.Rngs(0))
    return model, vae


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="official-tiny")
    ap.add_argument("--pn", default="0.06M")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--cfg", type=float, default=4.0)
    args = ap.parse_args()
    print(f"devices: {jax.devices()}")
    model, vae = build(args.size, args.dtype)
    sched = get_schedule(1.0, args.pn).scales
    decode = jit_decode(vae)
    rng = np.random.default_rng(0)
    T = 12
    text = jnp.asarray(rng.normal(size=(args.batch, T, model.cfg.text_channels)), jnp.float32)
    mask = jnp.ones((args.batch, T), bool)
    sampler = Sampler(model)
    st = SamplingConfig(cfg=args.cfg, tau=0.5, top_k=900, top_p=0.97)

    def run(seed, with_decode):
        out = sampler.generate(text, mask, sched, settings=st, seeds=list(range(seed, seed + args.batch)), decode=False)
        res = decode(out.summed_codes) if with_decode else out.summed_codes
        return jax.block_until_ready(res)

    t0 = time.perf_counter()
    run(0, True)
    compile_s = time.perf_counter() - t0
    for with_decode in (False, True):
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            run(r + 1, with_decode)
            times.append(time.perf_counter() - t0)
        what = "sampling + VAE decode" if with_decode else "sampling (transformer)"
        print(f"{args.size} {args.pn} B={args.batch} {len(sched)} scales, CFG {args.cfg}, {args.dtype}: {what}: "
              f"median {np.median(times):.4f} s per batch (min {min(times):.4f}), "
              f"{np.median(times) / args.batch:.4f} s per image")
    print(f"first call (compilation + run): {compile_s:.1f} s; {peak_memory()}")
    if jax.devices()[0].platform == "cpu" and args.size == "official-tiny":
        print("accelerator runs (e.g. --size 2b --pn 1M --batch 1 --dtype bfloat16) need a GPU/TPU: none here")


if __name__ == "__main__":
    main()
