"""Teacher-forced forward and forward+backward time of the Infinity transformer.

  python benchmarks/train_step.py                      # official-tiny and layer12, B=2, 256x256 (521 tokens)
  python benchmarks/train_step.py --sizes layer12 --batch 4 --pn 0.06M

Prints compile time apart, median step time, tokens/s, and achieved TFLOP/s from the analytic
FLOP count (infinity_jax.transformer.flops). The official PyTorch forward at official-tiny
takes about 0.02 s on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infinity_jax.schedules import get_schedule
from infinity_jax.transformer.config import InfinityConfig, size_config
from infinity_jax.transformer.convert import load
from infinity_jax.transformer.flops import forward_flops
from infinity_jax.transformer.loss import infinity_loss
from infinity_jax.transformer.model import Infinity

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official-tiny"


def build(name: str, scan: bool, impl: str = "auto"):
    if name == "official-tiny":
        man = json.loads((SHARED / "manifest.json").read_text()) if SHARED.exists() else None
        if man is not None:
            cfg = InfinityConfig.from_official(man["config"]["infinity"], scan_blocks=scan, attention_impl=impl)
            return load(str(SHARED / "weights_infinity.npz"), cfg)
        cfg = InfinityConfig(depth=2, embed_dim=128, num_heads=2, block_chunks=2, scan_blocks=scan,
                             attention_impl=impl)
    else:
        cfg = size_config(name, scan_blocks=scan, attention_impl=impl)
    return Infinity(cfg, rngs=nnx.Rngs(0))


def timeit(fn, *args, repeats: int):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="official-tiny,layer12")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--pn", default="0.06M")
    ap.add_argument("--text_len", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scan", action="store_true", help="stack blocks under jax.lax.scan")
    ap.add_argument("--attention_impl", default="reference,auto",
                    help="comma-separated attention backends to time side by side (reference = dense L x L)")
    args = ap.parse_args()
    sched = get_schedule(1.0, args.pn).scales
    L = sum(h * w for _, h, w in sched)
    print(f"devices: {jax.devices()}  batch {args.batch}, {args.pn} ({L} tokens), caption {args.text_len} tokens")
    for name, impl in [(n, i) for n in args.sizes.split(",") for i in args.attention_impl.split(",")]:
        model = build(name, args.scan, impl)
        cfg = model.cfg
        rng = np.random.default_rng(0)
        B, T = args.batch, args.text_len
        text = jnp.asarray(rng.normal(size=(B, T, cfg.text_channels)), jnp.float32)
        mask = jnp.ones((B, T), bool)
        x = jnp.asarray(rng.normal(size=(B, L - 1, cfg.token_bits)) * 0.2, jnp.float32)
        bits = jnp.asarray(rng.integers(0, 2, size=(B, L, cfg.token_bits)), jnp.int32)
        graphdef, state = nnx.split(model)

        @jax.jit
        def forward(state, text, mask, x):
            return nnx.merge(graphdef, state)(text, mask, x, sched)

        def loss_fn(state, text, mask, x, bits):
            return infinity_loss(nnx.merge(graphdef, state)(text, mask, x, sched), bits, sched).loss

        grad = jax.jit(jax.value_and_grad(loss_fn))
        c_f, t_f = timeit(forward, state, text, mask, x, repeats=args.repeats)
        c_b, t_b = timeit(grad, state, text, mask, x, bits, repeats=args.repeats)
        fl = forward_flops(cfg, sched, T)["total"] * B
        print(f"{name:>14} {impl:>11}: forward {t_f * 1e3:8.1f} ms (compile {c_f:.1f} s, {B * L / t_f:,.0f} tokens/s, "
              f"{fl / t_f / 1e12:.3f} TFLOP/s) | forward+backward {t_b * 1e3:8.1f} ms (compile {c_b:.1f} s, "
              f"{B * L / t_b:,.0f} tokens/s, {3 * fl / t_b / 1e12:.3f} TFLOP/s)")


if __name__ == "__main__":
    main()
