r"""Ahead-of-time compile report: will a run fit a TPU slice, and how fast could it be? No TPU needed.

  pip install -e '.[tpu]'    # libtpu: compiles for TPU topologies on any machine
  python -m infinity_jax.tools.aot --config configs/infinity.py:size=2b,pn=1M --topology v5p-128 --batch 256
  python -m infinity_jax.tools.aot --config configs/infinity.py:size=layer12,pn=0.06M --topology v5p:2x2x1 \
      --parts train --json out.json

Compiles, for the slice's compile-only devices (``jax.experimental.topologies``), the Trainer's
real train step (optimizer included, ``Trainer.jitted_step``) on the config's mesh (default: fsdp
over every chip) for the template with the most tokens, and the sampler's per-scale programs
(``Sampler.programs``, guidance on, one chip). Per chip it prints parameter + optimizer bytes,
temporaries, the total against the chip's HBM, FLOPs per step (matmuls from the HLO with loops
counted trip-count times, and XLA's own count, which counts a loop body once), the collectives in
the HLO, and a roofline *estimate* of step time and MFU from the chip table in
:mod:`infinity_jax.tools.tpu`. It exits with status 3 when the train step or the sampler does not fit.

``attention_impl="auto"`` resolves for the target, as it will on the slice itself (``splash`` on
TPU), not for the host that compiles; pass ``--attention_impl`` to compile another backend. Host-only settings do not change
the compiled program and are neutralised: the data source (``synthetic``), the text source
(``random``: same (B, T, C) features) and checkpoints (the tokenizer's architecture comes from
``config.tokenizer``, not from a checkpoint file).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from jax.sharding import SingleDeviceSharding

from infinity_jax import train as train_cli
from infinity_jax.bundle import with_block_dtype
from infinity_jax.data.bucketing import make_buckets
from infinity_jax.sampling.sampler import Sampler
from infinity_jax.schedules import tokenizer_schedule
from infinity_jax.sharding import make_mesh
from infinity_jax.text.config import preset as t5_preset
from infinity_jax.text.t5 import Model as T5
from infinity_jax.tools.tpu import ChipSpec, TopologyError, chip_for_device_kind, parse_topology, topology_devices
from infinity_jax.training.compile_report import (GIB, attention_label, fmt_bytes, format_train_report,
                                                  program_stats, roofline, shard_bytes, train_report)
from infinity_jax.training.trainer import ConfigError, Trainer, model_config, vae_config
from infinity_jax.transformer.attention import resolve as resolve_attention
from infinity_jax.transformer.flops import self_attention_flops
from infinity_jax.transformer.model import Infinity

log = logging.getLogger(__name__)

#: Official sampling time of Infinity-2B, one 1024x1024 image on an H100 (paper, README).
OFFICIAL_H100_SECONDS_PER_IMAGE = 0.8


def compile_config(config, *, batch: int | None = None, attention_impl: str | None = None,
                   platform: str = "tpu"):
    """A copy of ``config`` with its host-only inputs neutralised (see the module docstring) and
    ``attention_impl="auto"`` resolved for the target ``platform``."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.data.source, c.data.path = "synthetic", ""
        c.text.source = "random"
        c.tokenizer.checkpoint = ""
        c.init.official, c.init.checkpoint = "", ""
        if batch:
            c.batch_size = int(batch)
        if attention_impl:
            c.model.attention_impl = attention_impl
        c.model.attention_impl = resolve_attention(str(c.model.attention_impl), platform)
    return c


def compile_train(config, devices, *, chip: ChipSpec | None = None, hbm_gib: float | None = None) -> dict:
    """Build the Trainer on a mesh of ``devices`` (config.mesh, default fsdp over all), compile the
    step of the template with the most tokens, and report."""
    try:
        mesh = make_mesh(dict(config.mesh), devices=devices)
    except ValueError as e:
        raise ConfigError(f"bad mesh {dict(config.mesh)} for {len(devices)} chips: {e}") from e
    trainer = Trainer(config, None, mesh=mesh)
    bucket_id = max(range(len(trainer.buckets)), key=lambda i: trainer.buckets[i].seq_len)
    jitted, args = trainer.jitted_step(bucket_id)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - t0
    return train_report(trainer, bucket_id, compiled, chip=chip, hbm_gib=hbm_gib, compile_seconds=seconds)


# ------------------------------------------------------------------------------------ sampler
def compile_sampler(config, device, *, batch: int = 1, cfg: float = 3.0, dtype: str | None = None,
                    param_dtype: str | None = None, text_encoder: str | None = None, last_scales: int | None = None,
                    chip: ChipSpec | None = None, hbm_gib: float | None = None, h_div_w: float = 1.0) -> dict:
    """Compile the sampler's per-scale programs on one chip for ``batch`` images (guidance on
    unless ``cfg == 1``) at ``config.pn``, template ``h_div_w`` (or ``config.schedule``); parameters
    as the pipeline holds them (float32, or the blocks in ``param_dtype``), compute and KV cache in
    ``dtype`` (default ``config.model.dtype``). ``text_encoder`` (a T5 preset, e.g. ``flan-t5-xl``)
    adds its parameters, resident beside the sampler in the pipeline, in ``param_dtype``.
    ``last_scales``: compile only the programs of the last n scales (the largest; the earlier ones
    are traced for their shapes only): their peak memory, no time estimate per image."""
    mcfg = model_config(config)
    mcfg = mcfg.replace(dtype=str(dtype or mcfg.dtype))
    vcfg = vae_config(config, mcfg)
    sched = tuple(tuple(x) for x in config.schedule) if config.get("schedule") else None
    scales = make_buckets(str(config.pn), None if sched else [h_div_w], sched, token_stride=vcfg.token_stride)[0].scales
    chip = chip or chip_for_device_kind(device.device_kind)
    hbm = hbm_gib * GIB if hbm_gib else (chip.hbm_bytes if chip else None)
    sh = SingleDeviceSharding(device)
    abstract = nnx.eval_shape(lambda: Infinity(mcfg, rngs=nnx.Rngs(0)))
    if param_dtype:
        abstract = with_block_dtype(abstract, param_dtype)
    graphdef, state = nnx.split(abstract)
    state = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh), state)
    text_bytes = 0
    if text_encoder:
        tdt = jnp.dtype(param_dtype or jnp.float32)
        t5 = nnx.eval_shape(lambda: T5(t5_preset(text_encoder), dtype=tdt, param_dtype=tdt, rngs=nnx.Rngs(0)))
        text_bytes = shard_bytes(nnx.state(t5, nnx.Param))
    sampler = Sampler.from_abstract(graphdef, state, mcfg)
    use_cfg = float(cfg) != 1.0
    prepare, steps = sampler.programs(scales, batch, use_cfg)

    def sds(shape, dt):
        return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dt), sharding=sh)

    def placed(tree):
        return jax.tree.map(lambda a: sds(a.shape, a.dtype), tree)

    T = min(int(config.get("text_len", 77)), int(config.text.max_len), mcfg.text_maxlen)  # a typical caption
    text, mask = sds((batch, T, mcfg.text_channels), jnp.float32), sds((batch, T), jnp.bool_)
    tc, x = placed(jax.eval_shape(prepare, state, text, mask, None, None))
    L = sum(h * w for _, h, w in scales)
    BB = 2 * batch if use_cfg else batch
    caches = None  # the first scale's program allocates them
    vs = tokenizer_schedule(scales, mcfg.apply_spatial_patchify)
    summed = sds((batch, vs[-1][1], vs[-1][2], mcfg.codebook_dim), jnp.float32)
    f32 = sds((), jnp.float32)
    rule = (sds((), jnp.int32), f32, sds((), jnp.bool_))
    keys = sds((batch, 2), jnp.uint32)
    per_scale = []
    splash = resolve_attention(mcfg.attention_impl) == "splash"
    first = len(steps) - int(last_scales) if last_scales else 0
    t0 = time.perf_counter()
    for k, fn in enumerate(steps):
        rb = sds((batch, vs[k][1], vs[k][2], mcfg.codebook_dim), jnp.int32)
        args = (state, caches, x, tc, f32, f32, rule, keys, sds((), jnp.bool_), rb, summed)
        if k < first:
            out = jax.eval_shape(fn, *args)
            caches, summed = placed(out[0]), placed(out[3])
            x = placed(out[4]) if out[4] is not None else None
            continue
        ps = program_stats(fn.lower(*args).compile())
        # the splash kernel's FLOPs are invisible to the HLO count: scale k's queries x its visible keys
        ps["flops"]["pallas_kernels_analytic"] = kernel = BB * (
            self_attention_flops(mcfg, scales[:k + 1]) - self_attention_flops(mcfg, scales[:k])) if splash else 0.0
        rl = roofline(ps["flops"]["hlo_matmul"] + kernel, ps["hbm_traffic_bytes"], ps["ici_bytes"], chip)
        per_scale.append({"scale": k, "grid": list(scales[k][1:]), "memory": ps["memory"], "flops": ps["flops"],
                          "hbm_traffic_bytes": ps["hbm_traffic_bytes"], "roofline": rl})
        out = jax.eval_shape(fn, *args)
        caches, summed = placed(out[0]), placed(out[3])
        x = placed(out[4]) if out[4] is not None else None
    peak = max(p["memory"]["total"] for p in per_scale)
    total = peak + text_bytes
    est = sum(p["roofline"]["time_s"] for p in per_scale) if chip and not first else None
    return {
        "program": "sampler", "size": str(config.size), "pn": str(config.pn), "attention_impl": mcfg.attention_impl,
        "attention_backend": resolve_attention(mcfg.attention_impl),
        "dtype": mcfg.dtype, "param_dtype": str(jnp.dtype(param_dtype or jnp.float32)), "batch": batch, "guidance": use_cfg, "template": h_div_w, "tokens": L,
        "scales": len(scales), "scales_compiled": len(per_scale),
        "chips": 1, "device_kind": device.device_kind, "chip": chip.name if chip else None, "hbm_bytes": hbm,
        "param_bytes": shard_bytes(state), "kv_cache_bytes": shard_bytes(caches),
        "peak_bytes": peak, "text_encoder": text_encoder, "text_encoder_bytes": text_bytes, "total_bytes": total,
        "fits": (total <= hbm) if hbm else None, "per_scale": per_scale,
        "estimate_seconds_per_image": est / batch if est is not None else None,
        "official_h100_seconds_per_image": OFFICIAL_H100_SECONDS_PER_IMAGE,
        "compile_seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------------ text
def format_sampler_report(r: dict) -> str:
    hbm = f"{fmt_bytes(r['hbm_bytes'])} ({r['chip']})" if r["hbm_bytes"] else "unknown HBM"
    fit = {True: "fits", False: "DOES NOT FIT", None: "fit unknown"}[r["fits"]]
    worst = max(r["per_scale"], key=lambda p: p["memory"]["total"])
    lines = [
        f"sampler, Infinity-{r['size']} pn={r['pn']} ({r['scales']} scales, {r['tokens']} tokens), batch {r['batch']}"
        f"{' + guidance' if r['guidance'] else ''}, {r['dtype']} (block parameters {r['param_dtype']}), "
        f"attention {attention_label(r)}; one {r['device_kind']}",
        f"  parameters {fmt_bytes(r['param_bytes'])}, KV cache {fmt_bytes(r['kv_cache_bytes'])}; peak per scale program "
        f"(arguments + temporaries + outputs + code) {fmt_bytes(r['peak_bytes'])} at scale {worst['scale']} "
        f"{worst['grid'][0]}x{worst['grid'][1]}",
    ]
    if r["text_encoder"]:
        lines.append(f"  + text encoder {r['text_encoder']} resident: {fmt_bytes(r['text_encoder_bytes'])}")
    lines.append(f"  total {fmt_bytes(r['total_bytes'])} of {hbm}: {fit}")
    if r["estimate_seconds_per_image"] is not None:
        lines.append(f"  roofline ESTIMATE (not a measurement): {r['estimate_seconds_per_image']:.3g} s per image "
                     f"(transformer scales only); official Infinity-2B: {r['official_h100_seconds_per_image']} s "
                     f"per 1024x1024 image on an H100")
    lines.append(f"  compiled {r['scales_compiled']} of {r['scales']} scale programs in {r['compile_seconds']:.1f} s")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ command line
def _define_flags() -> dict:
    """The command's flags (defined only when it runs, so that importing this module defines none)."""
    return {
        "topology": flags.DEFINE_string("topology", None, "TPU slice: v5p-128, v5p:4x4x4, v5e-16, v6e-8, v4-32, ..."),
        "batch": flags.DEFINE_integer("batch", None, "Global train batch (default: config.batch_size)."),
        "parts": flags.DEFINE_list("parts", ["train", "sampler"], "What to compile: train, sampler."),
        "attention_impl": flags.DEFINE_string("attention_impl", None, "Override config.model.attention_impl."),
        "hbm_gib": flags.DEFINE_float("hbm_gib", None, "Override the chip's HBM capacity (GiB) for the fit check."),
        "sampler_batch": flags.DEFINE_integer("sampler_batch", 1, "Images per sampler call."),
        "sampler_cfg": flags.DEFINE_float("sampler_cfg", 3.0, "Sampler guidance (1 = off: no unconditional rows)."),
        "sampler_dtype": flags.DEFINE_string("sampler_dtype", None, "Sampler dtype (default: config.model.dtype)."),
        "sampler_param_dtype": flags.DEFINE_string("sampler_param_dtype", None, "Storage dtype of the blocks' (and the "
                                                   "text encoder's) parameters (default float32; bfloat16 as the "
                                                   "official inference, generate --param_dtype)."),
        "sampler_last_scales": flags.DEFINE_integer("sampler_last_scales", None, "Compile only the last n scales' "
                                                    "programs (the largest; no time estimate)."),
        "sampler_text_encoder": flags.DEFINE_string("sampler_text_encoder", None, "Count this T5 encoder's parameters "
                                                    "as resident beside the sampler (e.g. flan-t5-xl)."),
        "json": flags.DEFINE_string("json", None, "Also write the report as JSON to this file ('-': JSON on stdout, "
                                                  "the text on stderr)."),
    }

def _default(o):
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    return str(o)


def run(config, topology: str, parts=("train", "sampler"), *, batch=None, attention_impl=None, hbm_gib=None,
        sampler_batch=1, sampler_cfg=3.0, sampler_dtype=None, sampler_param_dtype=None, sampler_text_encoder=None,
        sampler_last_scales=None, echo=print) -> dict:
    """Compile ``parts`` for ``topology``; returns ``{"topology", "train"?, "sampler"?, "fits"}``."""
    target = parse_topology(topology)
    unknown = set(parts) - {"train", "sampler"}
    if unknown or not parts:
        raise ValueError(f"--parts takes train and/or sampler, got {','.join(parts)}")
    config = compile_config(config, batch=batch, attention_impl=attention_impl)
    devices = topology_devices(target)
    out = {"topology": target.topology_name, "chips": target.chips, "chip_spec": dataclasses.asdict(target.chip)}
    if "train" in parts:
        out["train"] = compile_train(config, devices, chip=target.chip, hbm_gib=hbm_gib)
        echo(format_train_report(out["train"]))
    if "sampler" in parts:
        out["sampler"] = compile_sampler(config, devices[0], batch=sampler_batch, cfg=sampler_cfg, dtype=sampler_dtype,
                                         param_dtype=sampler_param_dtype, text_encoder=sampler_text_encoder,
                                         last_scales=sampler_last_scales,
                                         chip=target.chip, hbm_gib=hbm_gib)
        echo(format_sampler_report(out["sampler"]))
    out["fits"] = all(out[p]["fits"] is not False for p in parts)
    return out


def main(argv, config_flag, f: dict) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if config_flag.value is None or not f["topology"].value:
        raise app.UsageError("--config and --topology are required, e.g. --config configs/infinity.py:size=2b,pn=1M "
                             "--topology v5p-128")
    for noisy in ("absl", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    only_json = f["json"].value == "-"
    try:
        report = run(config_flag.value, f["topology"].value, tuple(f["parts"].value), batch=f["batch"].value,
                     attention_impl=f["attention_impl"].value, hbm_gib=f["hbm_gib"].value,
                     sampler_batch=f["sampler_batch"].value, sampler_cfg=f["sampler_cfg"].value,
                     sampler_dtype=f["sampler_dtype"].value, sampler_param_dtype=f["sampler_param_dtype"].value,
                     sampler_text_encoder=f["sampler_text_encoder"].value,
                     sampler_last_scales=f["sampler_last_scales"].value,
                     echo=(lambda t: print(t, file=sys.stderr)) if only_json else print)
    except (ConfigError, TopologyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    text = json.dumps(report, default=_default, indent=1)
    if only_json:
        print(text)
    elif f["json"].value:
        with open(f["json"].value, "w") as fh:
            fh.write(text)
    if not report["fits"]:
        what = [p for p in ("train", "sampler") if p in report and report[p]["fits"] is False]
        need = {p: report[p]["memory"]["total"] if p == "train" else report[p]["total_bytes"] for p in what}
        print("error: does not fit: " + ", ".join(f"{p} needs {fmt_bytes(need[p])} per chip" for p in what)
              + f"; the chip has {fmt_bytes(report[what[0]]['hbm_bytes'])}", file=sys.stderr)
        sys.exit(3)


def cli() -> None:
    f = _define_flags()
    app.run(lambda argv: main(argv, train_cli._CONFIG, f), flags_parser=train_cli._parse_flags)


if __name__ == "__main__":
    cli()
