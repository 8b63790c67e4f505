"""BSQ-VAE encode / decode time at the official-tiny config (batch 2, 256x256, 7 scales).

  python benchmarks/tokenizer.py                     # official-tiny weights when the fixture exists
  python benchmarks/tokenizer.py --repeats 20 --batch 4
  python benchmarks/tokenizer.py --config official   # the real d32 tokenizer (base_ch 128), random init

encode = image (B,256,256,3) -> bits of the 7-scale schedule (encoder + multi-scale BSQ, one jit);
decode = bits -> image (code sum + decoder, one jit). Compile time (first call) is printed apart
from the steady-state time (median and min over ``--repeats`` calls). The official PyTorch code
takes 0.36 s (encode) and 0.71 s (decode) at official-tiny on a 2-core CPU (fixture manifest).

Wall-clock CPU timings are only meaningful on an otherwise idle machine: the 1-minute load
average is printed next to them, and so is the process CPU time per call divided by the core
count, which estimates the idle wall time when the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from infinity_jax.schedules import get_schedule
from infinity_jax.tokenizer import vae as V
from infinity_jax.tokenizer.convert import load

FIXTURE = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official-tiny"


def build(name: str, fast_upsample: bool):
    if name == "official-tiny":
        man = FIXTURE / "manifest.json"
        if man.exists():
            cfg = V.VAEConfig.from_official(json.loads(man.read_text())["config"]["vae"],
                                            fast_upsample=fast_upsample)
            return load(FIXTURE / "weights_vae.npz", cfg), "fixture weights"
        cfg = V.VAEConfig(codebook_dim=32, base_ch=32, fast_upsample=fast_upsample)
        return V.init(cfg), "random init (fixture not found)"
    cfg = V.VAEConfig(fast_upsample=fast_upsample)
    return V.init(cfg), "random init"


def timeit(fn, *args, repeats: int):
    """(compile s, median wall s, min wall s, min process CPU s) over ``repeats`` calls."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return compile_s, float(np.median(times)), float(np.min(times)), float(np.min(cpu))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="official-tiny", choices=["official-tiny", "official"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--pn", default="0.06M")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--plain-upsample", action="store_true",
                    help="nearest x2 + conv3x3 literally instead of the sub-pixel form")
    args = ap.parse_args()

    model, source = build(args.config, not args.plain_upsample)
    sched = get_schedule(1.0, args.pn)
    H, W = sched.pixel
    images = jax.random.uniform(jax.random.key(0), (args.batch, H, W, 3), minval=-1.0, maxval=1.0)
    if args.config == "official-tiny" and (FIXTURE / "inputs.npz").exists() and args.batch == 2 and H == 256:
        images = jnp.asarray(np.load(FIXTURE / "inputs.npz")["image"].transpose(0, 2, 3, 1))

    encode_fn = V.jit_encode(model, sched.scales)

    def encode(x):
        return encode_fn(x)[1]  # bits of every scale

    decode = V.jit_decode_bits(model)
    bits = encode(images)

    enc_c, enc_med, enc_min, enc_cpu = timeit(encode, images, repeats=args.repeats)
    dec_c, dec_med, dec_min, dec_cpu = timeit(decode, bits, repeats=args.repeats)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cores = os.cpu_count() or 1
    cfg = model.config
    print(f"BSQ-VAE {args.config} ({source}): d={cfg.codebook_dim} base_ch={cfg.base_ch} "
          f"ch_mult={cfg.ch_mult} | batch {args.batch} x {H}x{W}, {len(sched.scales)} scales | "
          f"{jax.devices()[0].platform} x{jax.device_count()}, {cores} cores | load avg {load:.2f}")
    for name, c, med, mn, cpu in (("encode (image -> bits)", enc_c, enc_med, enc_min, enc_cpu),
                                  ("decode (bits -> image)", dec_c, dec_med, dec_min, dec_cpu)):
        print(f"  {name}: {med:.3f} s median, {mn:.3f} s min (compile {c:.1f} s) | "
              f"{cpu:.3f} CPU-s per call -> {cpu / cores:.3f} s if all {cores} cores were free")
    if args.config == "official-tiny" and args.batch == 2 and H == 256:
        print("  official PyTorch (fixture manifest): encode 0.365 s, decode 0.711 s")


if __name__ == "__main__":
    main()
