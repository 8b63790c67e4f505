"""The sweep plan: size configs, analytic FLOPs per step, compute points, plan files, one job per size."""
from __future__ import annotations

import copy
import json
import shlex
import sys
from typing import Sequence

import ml_collections
import numpy as np

from infinity_jax.data.bucketing import make_buckets
from infinity_jax.scaling.files import is_primary, as_path, read_json, read_jsonl, write_json
from infinity_jax.training.optimizer import peak_learning_rate
from infinity_jax.training.trainer import model_config, vae_config
from infinity_jax.transformer.config import SIZE_NAMES
from infinity_jax.transformer.config import size_config as official_size
from infinity_jax.transformer.flops import param_count, train_flops

DEFAULT_SWEEP = dict(ladder={}, sizes="", budget=0.0, mode="iso_flop", points=5, point_ratio=2.0, min_steps=10,
                     lr_scaling="none", lr_base_width=1024)
DEFAULT_VALIDATION = dict(num_images=256, batch_size=32, strength=0.2, fixed_strength=False, apply_layers=20,
                          requant=True, seed=1234, use_ema=False, h_div_w=1.0, source="factory", factory="",
                          factory_kwargs={}, path="")


def sweep_section(config) -> dict:
    s = dict(DEFAULT_SWEEP)
    if "sweep" in config:
        s.update(config.sweep.to_dict())
    return s


def validation_section(config):
    v = dict(DEFAULT_VALIDATION)
    if "validation" in config:
        v.update(config.validation.to_dict())
    return ml_collections.ConfigDict(v)


_BACKBONE_KEYS = ("depth", "embed_dim", "num_heads", "block_chunks", "drop_path_rate", "codebook_dim",
                  "apply_spatial_patchify")


def size_config(config, name: str):
    """The trainer config of size ``name``: a ``config.sweep.ladder`` entry (``config.model`` overrides on
    top of ``config.size``) or an official size (``config.size = name``, other ``config.model`` overrides
    kept: scan, remat, dtype...)."""
    c = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
    ladder = sweep_section(config)["ladder"] or {}
    if name in ladder:
        c.model.update(dict(ladder[name]))
    elif name in SIZE_NAMES:
        # the official size sets the backbone; the config's other model settings (scan, remat, dtype,
        # text width...) stay
        official = official_size(name)
        c.size = name
        for k in _BACKBONE_KEYS:
            c.model[k] = getattr(official, k)
    else:
        known = sorted(ladder) + list(SIZE_NAMES)
        raise ValueError(f"unknown sweep size {name!r}; choose from {', '.join(known)}")
    sw = sweep_section(config)
    if sw["lr_scaling"] == "inverse_width":
        # Adam's best rate falls about as 1/width (muP's rule for hidden matrices): the configured peak
        # rate (optim.lr, or tblr * batch / 256) holds at lr_base_width and scales as base / width
        base = peak_learning_rate(config.optim, int(config.batch_size))
        c.optim.lr = float(base * float(sw["lr_base_width"]) / model_config(c).embed_dim)
    elif sw["lr_scaling"] not in ("none", "", None):
        raise ValueError(f"unknown sweep.lr_scaling {sw['lr_scaling']!r} (none, inverse_width)")
    c.validation = validation_section(config)
    if "sweep" in c:
        del c["sweep"]
    return c


def step_flops(size_cfg) -> dict:
    """Parameters and analytic training FLOPs per step of a size config (mean over its templates)."""
    mcfg = model_config(size_cfg)
    vcfg = vae_config(size_cfg, mcfg)
    sched = tuple(tuple(s) for s in size_cfg.schedule) if size_cfg.get("schedule") else None
    templates = list(size_cfg.templates) if size_cfg.get("templates") else None
    buckets = make_buckets(size_cfg.pn, templates, sched, token_stride=vcfg.token_stride)
    text_len = int(size_cfg.text.max_len)
    per_image = [train_flops(mcfg, b.scales, text_len) for b in buckets]
    return {"params": int(param_count(mcfg)), "flops_per_image": float(np.mean(per_image)),
            "flops_per_step": float(np.mean(per_image)) * int(size_cfg.batch_size),
            "batch_size": int(size_cfg.batch_size), "text_len": text_len,
            "scales": [list(s) for s in buckets[0].scales], "seq_len": int(buckets[0].seq_len),
            "templates": [b.h_div_w for b in buckets],
            "model": {k: getattr(mcfg, k) for k in ("depth", "embed_dim", "num_heads", "mlp_hidden",
                                                     "codebook_dim", "text_channels")}}


def compute_points(budget: float, points: int, ratio: float) -> list[float]:
    """``points`` log-spaced compute values ending at ``budget``: budget / ratio**(points-1-k)."""
    return [float(budget) / float(ratio) ** (points - 1 - k) for k in range(int(points))]


def plan_sweep(config, sizes: Sequence[str], budget: float | None = None, mode: str | None = None,
               points: int | None = None) -> dict:
    """The sweep plan: per size its config, parameters, FLOPs per step, and (steps, compute) per point."""
    s = sweep_section(config)
    budget = float(budget if budget is not None else s["budget"])
    mode = mode or s["mode"]
    points = int(points if points is not None else s["points"])
    ratio = float(s["point_ratio"])
    min_steps = int(s["min_steps"])
    if budget <= 0:
        raise ValueError("the compute budget must be positive (--budget or config.sweep.budget)")
    if not sizes:
        raise ValueError("no sizes (--sizes or config.sweep.sizes)")
    if mode not in ("iso_flop", "iso_steps"):
        raise ValueError(f"unknown sweep mode {mode!r}")
    cfgs = {n: size_config(config, n) for n in sizes}
    stats = {n: step_flops(c) for n, c in cfgs.items()}
    grid = compute_points(budget, points, ratio)
    f_max = max(st["flops_per_step"] for st in stats.values())
    out = {"mode": mode, "budget": budget, "points": points, "point_ratio": ratio, "min_steps": min_steps,
           "compute_grid": grid, "sizes": {}}
    for n in sizes:
        f = stats[n]["flops_per_step"]
        total = int(round(budget / f)) if mode == "iso_flop" else int(round(budget / f_max))
        if total < min_steps:
            raise ValueError(f"size {n}: the budget {budget:.3g} FLOPs buys {budget / f:.1f} steps of "
                             f"{f:.3g} FLOPs; raise --budget (at least {min_steps} steps are needed)")
        pts, seen = [], set()
        for k, c in enumerate(grid):
            st_ = int(round(c / f))
            if st_ > total or st_ < min_steps or st_ in seen:
                continue
            if mode == "iso_steps" and st_ < total and st_ > 0.9 * total:
                continue  # too close to the last step (validated anyway)
            seen.add(st_)
            pts.append({"point": k, "nominal_compute": c, "steps": st_, "compute": st_ * f})
        if total not in seen:  # iso_steps: the size's last step, off the grid
            pts.append({"point": None, "nominal_compute": None, "steps": total, "compute": total * f})
        rec = dict(stats[n])
        rec.update(size=n, total_steps=total, total_compute=total * f, points=pts)
        out["sizes"][n] = rec
    return out, cfgs


def _config_py() -> str:
    return ('"""This size\'s trainer config (written by infinity_jax.scaling): loads config.json next to it."""\n'
            "import json, os\nimport ml_collections\n\n\ndef get_config(arg=''):\n"
            "    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config.json')) as f:\n"
            "        return ml_collections.ConfigDict(json.load(f))\n")


class PlanMismatchError(ValueError):
    """A size folder holds validation records of a different plan (budget, batch, schedule...)."""


#: Config sections whose change makes a size's earlier records incomparable with new ones.
_RUN_KEYS = ("size", "model", "optim", "batch_size", "schedule", "templates", "pn", "bsc", "loss", "seed", "data",
             "tokenizer", "text")


def _plan_key(p: dict) -> tuple:
    return (int(p["total_steps"]), float(p["flops_per_step"]), tuple(int(q["steps"]) for q in p["points"]))


def _run_diff(old: dict, new: dict) -> list[str]:
    return [k for k in _RUN_KEYS if json.dumps(old.get(k), sort_keys=True) != json.dumps(new.get(k), sort_keys=True)]


def write_plan(workdir: str, plan: dict, cfgs: dict, sizes: Sequence[str] | None = None) -> None:
    """Write ``sweep.json`` and, for ``sizes`` (default all: a job writes only the sizes it trains, so
    parallel jobs never write each other's files), ``<size>/config.json, config.py, plan.json``.

    Raises :class:`PlanMismatchError` when a size folder already holds validation records made with a
    different plan (use another ``--workdir``, or delete the folder).
    """
    sizes = list(cfgs) if sizes is None else list(sizes)
    for n in sizes:
        d = f"{workdir}/{n}"
        if as_path(f"{d}/plan.json").exists() and read_jsonl(f"{d}/validation.jsonl"):
            old = read_json(f"{d}/plan.json")
            if _plan_key(old) != _plan_key(plan["sizes"][n]):
                raise PlanMismatchError(
                    f"{d} was trained with another plan ({old['total_steps']} steps of {old['flops_per_step']:.4g} "
                    f"FLOPs, validation at {[q['steps'] for q in old['points']]}); "
                    f"now {plan['sizes'][n]['total_steps']} "
                    f"steps of {plan['sizes'][n]['flops_per_step']:.4g} FLOPs. Use another --workdir or remove {d}.")
            if as_path(f"{d}/config.json").exists():
                diff = _run_diff(read_json(f"{d}/config.json"), json.loads(cfgs[n].to_json_best_effort()))
                if diff:
                    raise PlanMismatchError(f"{d} was trained with another config (config.{', config.'.join(diff)} "
                                            f"differ). Use another --workdir or remove {d}.")
    if not is_primary():
        return
    write_json(f"{workdir}/sweep.json", plan)
    for n in sizes:
        c = cfgs[n]
        d = f"{workdir}/{n}"
        c = copy.deepcopy(c)
        c.total_steps = plan["sizes"][n]["total_steps"]
        write_json(f"{d}/config.json", json.loads(c.to_json_best_effort()))
        as_path(f"{d}/config.py").write_text(_config_py())
        write_json(f"{d}/plan.json", plan["sizes"][n])


def job_commands(argv: Sequence[str], sizes: Sequence[str]) -> list[str]:
    """One ``run ... --only <size>`` command per size, from this process's command line."""
    base, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--only":
            skip = True
            continue
        if a.startswith("--only="):
            continue
        base.append("run" if a in ("plan", "run") else a)
    return [" ".join([sys.executable, "-m", "infinity_jax.scaling"] + [shlex.quote(a) for a in base]
                     + [f"--only={n}"]) for n in sizes]

