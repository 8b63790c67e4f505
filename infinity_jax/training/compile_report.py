"""The per-chip report of a compiled train step: bytes (state, temporaries, total against HBM), FLOPs
(HLO matmuls, XLA's count, Pallas kernels analytically, the model), collectives and a roofline
ESTIMATE of step time and MFU. Used by the trainer before its loop and by ``tools/aot``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from infinity_jax.sharding import indivisible_params
from infinity_jax.tools.hlo_stats import hlo_stats
from infinity_jax.tools.tpu import ChipSpec, chip_for_device_kind
from infinity_jax.transformer.attention import resolve as resolve_attention
from infinity_jax.transformer.flops import self_attention_flops, train_flops

GIB = 2 ** 30


def _cost(compiled) -> dict:
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return {}
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return dict(ca or {})


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    out = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
           "aliased": int(m.alias_size_in_bytes), "temporaries": int(m.temp_size_in_bytes),
           "code": int(m.generated_code_size_in_bytes)}
    out["total"] = out["arguments"] + out["temporaries"] + out["outputs"] - out["aliased"] + out["code"]
    return out


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (the largest shard)."""
    total = 0
    for a in jax.tree.leaves(tree):
        shape = a.sharding.shard_shape(a.shape) if getattr(a, "sharding", None) is not None else a.shape
        total += int(np.prod(shape)) * jnp.dtype(a.dtype).itemsize
    return total


def roofline(flops: float, hbm_bytes: float, ici_bytes: float, chip: ChipSpec | None) -> dict | None:
    """Lower-bound time (an estimate, not a measurement): the slowest of compute at the bf16 peak,
    HBM traffic at the HBM bandwidth and collective traffic at the ICI bandwidth."""
    if chip is None:
        return None
    t = {"compute_s": flops / (chip.peak_tflops * 1e12), "hbm_s": hbm_bytes / (chip.hbm_gbps * 1e9),
         "ici_s": ici_bytes / (chip.ici_gbitps * 1e9 / 8)}
    t["time_s"] = max(t.values())
    t["bound"] = max(("compute_s", "hbm_s", "ici_s"), key=t.get)[:-2]
    return t


def program_stats(compiled) -> dict:
    hs = hlo_stats(compiled.as_text())
    ca = _cost(compiled)
    return {"memory": _memory(compiled), "hlo": hs,
            "flops": {"hlo_matmul": hs.matmul_flops, "xla_cost_analysis": float(ca.get("flops", 0.0))},
            "hbm_traffic_bytes": hs.hbm_bytes, "ici_bytes": hs.ici_bytes}


# ------------------------------------------------------------------------------------ train step
def train_report(trainer, bucket_id: int, compiled, *, chip: ChipSpec | None = None,
                 hbm_gib: float | None = None, compile_seconds: float | None = None) -> dict:
    """The per-chip report of a compiled train step (``Trainer.jitted_step(bucket_id)``, compiled)."""
    device = trainer.mesh.devices.flat[0]
    chip = chip or chip_for_device_kind(device.device_kind)
    hbm = hbm_gib * GIB if hbm_gib else (chip.hbm_bytes if chip else None)
    bucket = trainer.buckets[bucket_id]
    n = trainer.mesh.size
    ps = program_stats(compiled)
    abstract = trainer.abstract_state()
    state = {k: shard_bytes(v) for k, v in abstract.items() if k != "step"}
    per_chip = trainer.global_batch / n
    model_flops = train_flops(trainer.mcfg, bucket.scales, trainer.text_len) * per_chip
    backend = resolve_attention(trainer.mcfg.attention_impl)
    # a Pallas kernel's FLOPs are invisible to the HLO count: the self-attention forward, again
    # under remat, and its backward (2x), from the analytic count
    passes = (4 if trainer.mcfg.remat else 3) if backend == "splash" else 0
    kernel = passes * self_attention_flops(trainer.mcfg, bucket.scales) * per_chip
    ps["flops"]["pallas_kernels_analytic"] = kernel
    rl = roofline(ps["flops"]["hlo_matmul"] + kernel, ps["hbm_traffic_bytes"], ps["ici_bytes"], chip)
    if rl:
        rl["mfu"] = model_flops / rl["time_s"] / (chip.peak_tflops * 1e12) if rl["time_s"] else None
    return {
        "program": "train_step", "size": str(trainer.config.size), "pn": str(trainer.config.pn),
        "attention_impl": trainer.mcfg.attention_impl,
        "attention_backend": backend, "dtype": trainer.mcfg.dtype,
        "template": bucket.h_div_w, "tokens": bucket.seq_len, "pixels": list(bucket.pixel),
        "global_batch": trainer.global_batch, "mesh": {k: int(v) for k, v in trainer.mesh.shape.items()},
        "chips": n, "device_kind": device.device_kind, "chip": chip.name if chip else None, "hbm_bytes": hbm,
        "state_bytes": state, "memory": ps["memory"], "fits": (ps["memory"]["total"] <= hbm) if hbm else None,
        "flops": {**ps["flops"], "model": model_flops}, "hbm_traffic_bytes": ps["hbm_traffic_bytes"],
        "ici_bytes": ps["ici_bytes"], "collectives": ps["hlo"].collectives, "loops": ps["hlo"].loops,
        "roofline": rl, "indivisible_params": indivisible_params(trainer.md.abstract, trainer.mesh),
        "compile_seconds": compile_seconds,
    }


def fmt_bytes(b) -> str:
    return f"{b / GIB:.2f} GiB" if abs(b) >= GIB / 10 else f"{b / 2 ** 20:.1f} MiB"


def attention_label(r: dict) -> str:
    impl, backend = r["attention_impl"], r.get("attention_backend", r["attention_impl"])
    return impl if impl == backend else f"{impl} -> {backend}"


def format_train_report(r: dict) -> str:
    m, s, f = r["memory"], r["state_bytes"], r["flops"]
    hbm = f"{fmt_bytes(r['hbm_bytes'])} ({r['chip']})" if r["hbm_bytes"] else "unknown HBM"
    fit = {True: "fits", False: "DOES NOT FIT", None: "fit unknown"}[r["fits"]]
    lines = [
        f"train step, Infinity-{r['size']} pn={r['pn']} (template h/w {r['template']}, {r['tokens']} tokens, "
        f"{r['pixels'][0]}x{r['pixels'][1]} px), global batch {r['global_batch']}, attention {attention_label(r)}, "
        f"{r['dtype']}; mesh {r['mesh']} on {r['chips']} x {r['device_kind']}",
        f"  per chip: parameters {fmt_bytes(s.get('params', 0))} + optimizer {fmt_bytes(s.get('opt_state', 0))}"
        + (f" + EMA {fmt_bytes(s['ema'])}" if "ema" in s else "")
        + f"; arguments {fmt_bytes(m['arguments'])}, temporaries {fmt_bytes(m['temporaries'])}, "
        f"outputs not aliased {fmt_bytes(m['outputs'] - m['aliased'])}, code {fmt_bytes(m['code'])}",
        f"  per chip total {fmt_bytes(m['total'])} of {hbm}: {fit}",
        f"  FLOPs per chip and step: {f['hlo_matmul']:.4g} (HLO matmuls, loops x trip count)"
        + (f" + {f['pallas_kernels_analytic']:.4g} (Pallas attention kernels, analytic)"
           if f.get("pallas_kernels_analytic") else "")
        + f", {f['xla_cost_analysis']:.4g} (XLA cost analysis, loop bodies once), {f['model']:.4g} (model, analytic)",
        "  collectives per chip and step: " + format_collectives(r["collectives"]),
    ]
    rl = r["roofline"]
    if rl:
        mfu = f"{100 * rl['mfu']:.1f} %" if rl.get("mfu") is not None else "n/a"
        lines.append(f"  roofline ESTIMATE (not a measurement): {rl['time_s'] * 1e3:.3g} ms per step "
                     f"({rl['bound']} bound; compute {rl['compute_s'] * 1e3:.3g} ms, HBM {rl['hbm_s'] * 1e3:.3g} ms, "
                     f"ICI {rl['ici_s'] * 1e3:.3g} ms), MFU <= {mfu}")
    for d in r["indivisible_params"]:
        lines.append(f"  replicated (not divisible): {d['param']} {tuple(d['shape'])} dim {d['dim']} "
                     f"({d['logical']!r} on {'x'.join(d['mesh_axes'])}={d['mesh_size']})")
    if r.get("compile_seconds") is not None:
        lines.append(f"  compiled in {r['compile_seconds']:.1f} s")
    return "\n".join(lines)


def format_collectives(c: dict) -> str:
    parts = [f"{k} {v['count']} in HLO / {v['executed']:.0f} run, {v['bytes'] / 2 ** 20:.1f} MiB"
             for k, v in c.items() if v["count"]]
    return "; ".join(parts) if parts else "none"
