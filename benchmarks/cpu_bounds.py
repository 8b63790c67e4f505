"""What is the fastest any implementation could be on this CPU? FLOPs against the machine's peak.

  JAX_PLATFORMS=cpu python benchmarks/cpu_bounds.py            # about a minute
  JAX_PLATFORMS=cpu python benchmarks/cpu_bounds.py --speedup_train 1.5 --speedup_ar 2 --json out.json

For every row of ``../shared/benchmarks/official_cpu.md`` that is mostly matrix products (the
training step at 256², B = 2, configs a, b, c; the sampler's AR loop with guidance at 256² to
1024²) it prints the analytic FLOPs (:mod:`infinity_jax.transformer.flops`: matrix products only,
so a lower bound on the work), the rate at which the official code ran them, the rate that a time
``--speedup_*`` times shorter than the official one would need, and this machine's fp32 limits:

* the theoretical peak, cores x clock x FLOP per cycle (AVX-512: 2 FMA units x 16 lanes x 2;
  AVX2: 2 x 8 x 2), from ``/proc/cpuinfo`` (a nominal clock: boost may be higher);
* the best fp32 matrix-product rate measured here, with XLA (``jax.jit(a @ b)``) and with torch
  (when installed), over shapes of the models (768-wide projections, 64-deep attention products)
  and a square 2048 product, on the same threads the benchmarks use.

A row whose needed rate is above the machine's best measured rate cannot reach its target here by
any implementation that performs the model's matrix products (the bound ignores every other op).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from infinity_jax.schedules import get_schedule
from infinity_jax.transformer.flops import forward_flops

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import cpu_vs_official as cvo  # noqa: E402  (the official table's parser and the row configs)

# (M, K, N): projections of layer12 at B=2 x 521 tokens, an attention product (queries of the
# last 1M scale x 64-deep heads x the visible keys), a square product
SHAPES = ((1042, 768, 2304), (1042, 3072, 768), (4096, 64, 10521), (2048, 2048, 2048))


def cpu_info() -> dict:
    """Model name, logical cores usable here, nominal MHz and the widest vector ISA."""
    text = pathlib.Path("/proc/cpuinfo").read_text() if pathlib.Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", text)
    mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", text)
    flags_line = re.search(r"flags\s*:\s*(.+)", text)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model.group(1).strip() if model else "unknown", "cores": cores,
            "mhz": float(mhz.group(1)) if mhz else None, "isa": isa}


def theoretical_peak(info: dict) -> float | None:
    """fp32 FLOP/s at the nominal clock: two FMA units per core (AVX-512: 16 lanes, AVX2: 8)."""
    lanes = {"avx512": 16, "avx2": 8}.get(info["isa"])
    if not lanes or not info["mhz"]:
        return None
    return info["cores"] * info["mhz"] * 1e6 * 2 * lanes * 2


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def xla_rates(repeats: int) -> dict:
    out = {}
    mm = jax.jit(lambda a, b: a @ b)
    for M, K, N in SHAPES:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((M, K), np.float32))
        b = jnp.asarray(np.random.default_rng(1).standard_normal((K, N), np.float32))
        t = best_time(lambda: mm(a, b).block_until_ready(), repeats)
        out[f"{M}x{K}x{N}"] = 2 * M * K * N / t
    return out


def torch_rates(repeats: int, threads: int) -> dict | None:
    try:
        import torch  # noqa: PLC0415 - optional
    except ImportError:
        return None
    torch.set_num_threads(threads)
    out = {}
    with torch.no_grad():
        for M, K, N in SHAPES:
            a, b = torch.randn(M, K), torch.randn(K, N)
            out[f"{M}x{K}x{N}"] = 2 * M * K * N / best_time(lambda: a @ b, repeats)
    return out


def rows(speedup_train: float, speedup_ar: float) -> list[dict]:
    """The matrix-product-bound rows of the official table with their FLOPs and needed rates."""
    official = cvo.read_official()
    out = []
    scales_256 = get_schedule(1.0, "0.06M").scales
    for r in official["train"]:
        cfg = cvo.train_model_config(r["config"])
        flops = 2 * 3 * forward_flops(cfg, scales_256, cvo.TEXT_LEN)["total"]  # B=2, forward + backward
        out.append({"row": f"training step, config {r['config']} (model step)", "flops": flops,
                    "official_s": r["model_step_s"],
                    "speedup": speedup_train})
    for r in official["sampling"]:
        if r["B"] != 1:
            continue
        cfg = cvo.train_model_config(r["config"])
        f = forward_flops(cfg, get_schedule(1.0, r["pn"]).scales, cvo.TEXT_LEN)
        out.append({"row": f"sampling AR loop, {r['key']}, guidance", "flops": 2 * f["total"] * r["B"],
                    "official_s": r["ar_s"], "speedup": speedup_ar})
    for r in out:
        r["official_rate"] = r["flops"] / r["official_s"]
        r["needed_rate"] = r["speedup"] * r["official_rate"]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speedup_train", type=float, default=1.5, help="target: official time / ours, training")
    ap.add_argument("--speedup_ar", type=float, default=2.0, help="target: official time / ours, AR loop")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the official table used 2)")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    try:
        table = rows(a.speedup_train, a.speedup_ar)
    except cvo.SetupError as e:
        raise SystemExit(f"error: {e}") from None
    info = cpu_info()
    peak = theoretical_peak(info)
    xr = xla_rates(a.repeats)
    tr = torch_rates(a.repeats, a.threads)
    best = max(list(xr.values()) + list((tr or {}).values()))
    peak_text = f"{peak / 1e9:.0f} GFLOP/s" if peak else "unknown"
    print(f"CPU: {info['model']}, {info['cores']} cores usable, {info['mhz']} MHz nominal, {info['isa']}; "
          f"fp32 theoretical peak {peak_text}")
    print("\nfp32 matrix products, GFLOP/s (best of %d):" % a.repeats)
    print("| M x K x N | XLA | torch |\n|---|---:|---:|")
    for k in xr:
        print(f"| {k} | {xr[k] / 1e9:.0f} | {tr[k] / 1e9:.0f} |" if tr else f"| {k} | {xr[k] / 1e9:.0f} | - |")
    print(f"\nbest measured here: {best / 1e9:.0f} GFLOP/s\n")
    print("| row | GFLOP (matmuls) | official s | official GFLOP/s | target | GFLOP/s needed | "
          "needed / best here | needed / peak |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in table:
        vs_peak = f"{r['needed_rate'] / peak:.2f}" if peak else "-"
        print(f"| {r['row']} | {r['flops'] / 1e9:.1f} | {r['official_s']:.3f} | {r['official_rate'] / 1e9:.0f} | "
              f"{r['speedup']:g}x | {r['needed_rate'] / 1e9:.0f} | {r['needed_rate'] / best:.2f} | {vs_peak} |")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps({"cpu": info, "peak": peak, "xla": xr, "torch": tr,
                                                    "rows": table}, indent=1))


if __name__ == "__main__":
    main()
