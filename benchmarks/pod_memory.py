"""Per-chip memory and FLOPs of Infinity training on TPU v5p slices, from ahead-of-time compilation.

  python benchmarks/pod_memory.py                                 # the full table (hours on 2 CPU cores)
  python benchmarks/pod_memory.py --rows layer12:0.06M:v5p:2x2x1 --no_sampler   # one small row
  python benchmarks/pod_memory.py --attention_impl xla --out pod_xla.json

Each row runs ``python -m infinity_jax.tools.aot`` in its own subprocess (needs libtpu:
``pip install -e '.[tpu]'``; no TPU): the train step (optimizer included) of a size at a resolution
on a slice, one image per chip (``--per_chip``), for the slices in ``--topologies`` from the
smallest up to the first on which it fits (``--all_topologies``: every one). Then the sampler rows:
Infinity-2B at 1M, batch 1 + guidance, bf16, one v5p chip; and the notebook's default (Infinity-2B,
1M, guidance, bf16, one image per sampler call) on one v5e chip (a Colab TPU); both with bfloat16
block parameters and the Flan-T5-XL encoder resident in bfloat16, as the pipeline holds them. Times are roofline ESTIMATES, never measurements. Prints a progress
line per row with its compile time, then a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

from infinity_jax.tools.tpu import parse_topology

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "infinity.py")
GIB = 2 ** 30
#: the pipeline as the notebook runs it: bfloat16 compute, KV cache and block parameters
#: (``PARAM_DTYPE``), one image per sampler call (``MAX_BATCH``), Flan-T5-XL resident in bfloat16
SAMPLER_BF16 = ["--sampler_batch=1", "--sampler_cfg=3", "--sampler_dtype=bfloat16", "--sampler_param_dtype=bfloat16",
                "--sampler_text_encoder=flan-t5-xl"]


def run_aot(size: str, pn: str, topology: str, *, parts: str, batch: int | None, attention_impl: str | None,
            extra: list[str], timeout: float) -> dict:
    """One ``infinity_jax.tools.aot`` run in a subprocess -> its JSON report (+ wall time, status)."""
    cmd = [sys.executable, "-m", "infinity_jax.tools.aot", f"--config={CONFIG}:size={size},pn={pn}",
           f"--topology={topology}", f"--parts={parts}", "--json=-", *extra]
    if batch:
        cmd.append(f"--batch={batch}")
    if attention_impl:
        cmd.append(f"--attention_impl={attention_impl}")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s", "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 3):
        err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")] or p.stderr.strip().splitlines()[-1:]
        return {"status": f"failed: {err[-1] if err else p.returncode}", "wall_s": wall}
    report = json.loads(p.stdout)
    report.update(status="ok", wall_s=wall)
    return report


def train_row(r: dict, size: str, pn: str, topology: str) -> str:
    if r["status"] != "ok":
        return f"| {size} | {pn} | {topology} | | | | | | {r['status']} | {r['wall_s']:.0f} |"
    t = r["train"]
    s, m, rl = t["state_bytes"], t["memory"], t["roofline"] or {}
    state = sum(s.values())
    est = f"{rl['time_s']:.3g} s, MFU {100 * rl['mfu']:.0f} %" if rl.get("mfu") is not None else ""
    return (f"| {size} | {pn} | {topology} ({t['chips']}) | {t['global_batch']} | {state / GIB:.2f} | "
            f"{m['temporaries'] / GIB:.2f} | {m['total'] / GIB:.2f} / {t['hbm_bytes'] / GIB:.0f} | "
            f"{(t['flops']['hlo_matmul'] + t['flops'].get('pallas_kernels_analytic', 0)) / 1e12:.2f} | "
            f"{'yes' if t['fits'] else 'NO'} ({est}) | "
            f"{t['compile_seconds']:.0f} |")


def sampler_row(r: dict, label: str) -> str:
    if r["status"] != "ok":
        return f"| {label} | | | | | | {r['status']} | {r['wall_s']:.0f} |"
    s = r["sampler"]
    est = s["estimate_seconds_per_image"]
    est = f"{est:.3g} s/image" if est is not None else f"{s['scales_compiled']} of {s['scales']} scales compiled"
    return (f"| {label} | {s['param_bytes'] / GIB:.2f} | {s['kv_cache_bytes'] / GIB:.2f} | "
            f"{s['peak_bytes'] / GIB:.2f} | {s['text_encoder_bytes'] / GIB:.2f} | "
            f"{s['total_bytes'] / GIB:.2f} / {s['hbm_bytes'] / GIB:.0f} | "
            f"{'yes' if s['fits'] else 'NO'}; {est} "
            f"(H100 official: {s['official_h100_seconds_per_image']} s) | "
            f"{s['compile_seconds']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="layer12,2b,8b,20b")
    ap.add_argument("--pns", default="0.06M,0.25M,1M")
    ap.add_argument("--topologies", default="v5p-128,v5p-256,v5p-512", help="v5p slices: 64, 128, 256 chips")
    ap.add_argument("--all_topologies", action="store_true", help="every slice, not only up to the first that fits")
    ap.add_argument("--rows", default="", help="explicit train rows size:pn:topology,... instead of the grid")
    ap.add_argument("--batch", type=int, default=0, help="global train batch (default: --per_chip x chips)")
    ap.add_argument("--per_chip", type=int, default=1, help="images per chip when --batch is not given")
    ap.add_argument("--attention_impl", default=None, help="config.model.attention_impl for every row")
    ap.add_argument("--no_sampler", action="store_true", help="skip the sampler rows")
    ap.add_argument("--sampler_only", action="store_true", help="only the sampler rows")
    ap.add_argument("--sampler_rows", default="v5p,v5e", help="which sampler rows: v5p, v5e (the notebook)")
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per row")
    ap.add_argument("--out", default="", help="also write every report to this JSON file (after every row)")
    ap.add_argument("--resume", action="store_true", help="reuse the rows already compiled in --out")
    a = ap.parse_args()

    if a.sampler_only:
        grid = []
    elif a.rows:
        jobs = [tuple(r.split(":", 2)) for r in a.rows.split(",") if r]
        grid = [(s, p, [t]) for s, p, t in jobs]
    else:
        grid = [(s, p, a.topologies.split(",")) for s in a.sizes.split(",") for p in a.pns.split(",")]
    kw = dict(attention_impl=a.attention_impl, timeout=a.timeout)

    def key(r: dict) -> tuple:
        return r.get("label", "train"), r["size"], r["pn"], r["topology"]

    done = {}
    if a.out and a.resume and pathlib.Path(a.out).exists():
        done = {key(r): r for r in json.loads(pathlib.Path(a.out).read_text()) if r.get("status") == "ok"}
    results, lines = [], []
    n_done = 0

    def save() -> None:  # after every row: a crash or a timeout loses nothing already compiled
        if a.out:  # rows of this run, then the earlier ok rows this run has not reached (or does not list)
            seen = {key(r) for r in results}
            kept = [r for k, r in done.items() if k not in seen]
            pathlib.Path(a.out).write_text(json.dumps(results + kept, indent=1))

    for size, pn, tops in grid:
        for topo in tops:
            n_done += 1
            print(f"[{n_done}] train {size} pn={pn} on {topo} ...", file=sys.stderr, flush=True)
            batch = a.batch or a.per_chip * parse_topology(topo).chips
            r = (done.get(("train", size, pn, topo))
                 or run_aot(size, pn, topo, parts="train", batch=batch, extra=[], **kw))
            results.append({**r, "size": size, "pn": pn, "topology": topo})
            save()
            lines.append(train_row(r, size, pn, topo))
            fits = r.get("train", {}).get("fits")
            print(f"    {r['status']}, fits={fits}, {r['wall_s']:.0f} s", file=sys.stderr, flush=True)
            if fits and not a.all_topologies:
                break
    sampler_lines = []
    if not a.no_sampler:
        for label, size, pn, topo, extra in (
                ("2b pn=1M, batch 1 + guidance, bf16, one v5p chip", "2b", "1M", "v5p:2x2x1", SAMPLER_BF16),
                ("notebook default: 2b pn=1M, 1 image per call + guidance, bf16, v5e 1x1", "2b", "1M",
                 "v5e:1x1", SAMPLER_BF16)):
            if topo.split(":")[0] not in a.sampler_rows.split(","):
                continue
            n_done += 1
            print(f"[{n_done}] sampler {label} ...", file=sys.stderr, flush=True)
            r = (done.get((label, size, pn, topo))
                 or run_aot(size, pn, topo, parts="sampler", batch=None, extra=extra, **kw))
            results.append({**r, "size": size, "pn": pn, "topology": topo, "label": label})
            save()
            sampler_lines.append(sampler_row(r, label))
            print(f"    {r['status']}, {r['wall_s']:.0f} s", file=sys.stderr, flush=True)
    print(f"attention_impl: {a.attention_impl or 'config default'}; per chip; times are roofline ESTIMATES\n")
    print("| size | pn | slice (chips) | batch | params + optimizer GiB | temporaries GiB | total / HBM GiB | "
          "TFLOP per step (HLO matmuls + attention kernels) | fits (estimate) | compile s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|---:|")
    print("\n".join(lines))
    if sampler_lines:
        print("\n| sampler | params GiB | KV cache GiB | peak of a scale program GiB | text encoder GiB | "
              "total / HBM GiB | fits; estimate | compile s |")
        print("|---|---:|---:|---:|---:|---:|---|---:|")
        print("\n".join(sampler_lines))


if __name__ == "__main__":
    main()
