r"""Scaling sweeps: train a ladder of model sizes at matched compute, validate, fit power laws.

  # a toy sweep on the synthetic shapes data (CPU, < 1 hour on 2 cores), then the analysis
  python -m infinity_jax.scaling run --config configs/scaling_toy.py --workdir /tmp/sweep
  python -m infinity_jax.scaling analyze --workdir /tmp/sweep          # -> /tmp/sweep/analysis/
  # the official ladder on a pod, one job per size (every job runs the same command but --only)
  python -m infinity_jax.scaling run --config configs/scaling_official.py:pn=0.06M \
      --config.data.path=/data/shards --config.validation.path=/data/val_shards ... \
      --sizes layer12,layer16,layer24,layer32 --budget 1e20 --workdir gs://bucket/sweep --only layer24
  python -m infinity_jax.scaling plan ...      # the plan and one command per size, nothing trained

``--config`` is a trainer config (``configs/infinity.py`` schema) with two more sections: ``sweep``
(ladder: name -> ``config.model`` overrides; sizes, budget, mode, points, point_ratio, min_steps,
lr_scaling) and ``validation`` (the held-out set and the BSC settings), see ``configs/scaling_toy.py``.
Sizes are ladder names or official sizes (layer12 ... layer48, 2b, ...).

Layout of ``--workdir`` (each size is an ordinary trainer workdir, resumable by re-running)::

  sweep.json                      the whole plan (sizes, parameters, FLOPs per step, compute points)
  <size>/config.json, config.py   the size's trainer config (``python -m infinity_jax.train
                                  --config <size>/config.py --workdir <size>`` continues it by hand)
  <size>/plan.json                its steps and compute at every point
  <size>/checkpoints/ metrics.jsonl   written by the trainer
  <size>/validation.jsonl         one record per compute point (means, per-scale lists, SEs)
  <size>/validation/step_XXXXXXXX.npz   per-image metrics (for the bootstrap)
  analysis/                       written by ``analyze``: PNG plots, CSV and Markdown tables, fits.json

Compute is counted analytically: ``infinity_jax.transformer.flops.train_flops`` (matmul FLOPs of
forward + backward, 3x forward) of the size's schedule and padded caption length, times the global
batch, per step; the frozen tokenizer and text encoder are not counted (as in the trainer's MFU).

Schedules (``--mode``):

* ``iso_flop`` (default): every size gets the same ``--budget`` of training FLOPs, so a smaller model
  takes proportionally more steps; validation at ``points`` compute values ``budget / ratio**j``
  (steps rounded, at least ``min_steps``), the same for every size, so losses are compared at equal
  compute. The learning-rate schedule of each run spans its own steps (warm-up then, by default,
  the official constant rate, so intermediate points are not biased by a decay).
* ``iso_steps``: every size trains the same number of steps (``budget`` / FLOPs per step of the
  largest size), as the Infinity paper's model-scaling runs; validation at the shared compute grid
  points each size reaches, plus its last step.

Learning rate: the config's (official: the same ``tblr`` for every size), or with
``sweep.lr_scaling=inverse_width`` the configured rate at ``sweep.lr_base_width`` scaled as
``base_width / width``.

Each compute point: the trainer's :meth:`Trainer.train` runs (resuming from the previous point's
checkpoint) to the point's step, then :class:`infinity_jax.eval.validation.Validator` evaluates the
held-out set (BSC strength 0.2 on every scale, per-scale loss and bit accuracy).

``analyze`` fits ``L = E + A x^-alpha`` to loss against parameters (at every compute point with
enough sizes; the headline is the largest) and against compute (the frontier: the lowest loss at
each compute point), with asymptotic standard errors and a paired bootstrap over the held-out
images, and the compute-optimal size ``N_opt ~ C^a``.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import logging
import os
import shlex
import sys
import time
from typing import Any, Sequence

import numpy as np
from absl import app, flags
from ml_collections import config_flags

log = logging.getLogger("infinity_jax.scaling")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config (a trainer config with optional `sweep` and "
                                          "`validation` sections), e.g. configs/scaling_toy.py.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep folder (one trainer workdir per size inside).")
_SIZES = flags.DEFINE_list("sizes", None, "Sizes of the sweep: names of config.sweep.ladder or official sizes "
                           "(layer12 ... layer48, 2b, ...). Default: config.sweep.sizes.")
_ONLY = flags.DEFINE_list("only", None, "Train only these sizes of the sweep in this process (separate pod jobs).")
_BUDGET = flags.DEFINE_float("budget", None, "Training FLOPs per size (iso_flop) or of the largest size (iso_steps). "
                             "Default: config.sweep.budget.")
_MODE = flags.DEFINE_enum("mode", None, ["iso_flop", "iso_steps"], "Compute-matching mode (default config.sweep.mode).")
_POINTS = flags.DEFINE_integer("points", None, "Compute points (default config.sweep.points).")
_OUT = flags.DEFINE_string("out", None, "analyze: output folder (default WORKDIR/analysis).")
_METRIC = flags.DEFINE_enum("metric", "loss", ["loss", "loss_uniform"], "analyze: the loss to fit "
                            "(scale-reweighted, the training objective, or the uniform token mean).")
_NBOOT = flags.DEFINE_integer("n_boot", 200, "analyze: bootstrap replicates (0: none).")

DEFAULT_SWEEP = dict(ladder={}, sizes="", budget=0.0, mode="iso_flop", points=5, point_ratio=2.0, min_steps=10,
                     lr_scaling="none", lr_base_width=1024)
DEFAULT_VALIDATION = dict(num_images=256, batch_size=32, strength=0.2, fixed_strength=False, apply_layers=20,
                          requant=True, seed=1234, use_ema=False, h_div_w=1.0, source="factory", factory="",
                          factory_kwargs={}, path="")


# --------------------------------------------------------------------------------------- files
def _path(p):
    from etils import epath  # noqa: PLC0415

    return epath.Path(p)


def _is_primary() -> bool:
    import jax  # noqa: PLC0415

    return jax.process_index() == 0


def write_json(path, obj) -> None:
    p = _path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=1, default=_json_default))


def read_json(path):
    return json.loads(_path(path).read_text())


def read_jsonl(path) -> list[dict]:
    p = _path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def append_jsonl(path, rec: dict) -> None:
    p = _path(path)
    old = p.read_text() if p.exists() else ""
    p.write_text(old + json.dumps(rec, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


# -------------------------------------------------------------------------------------- config
def sweep_section(config) -> dict:
    s = dict(DEFAULT_SWEEP)
    if "sweep" in config:
        s.update(config.sweep.to_dict())
    return s


def validation_section(config):
    import ml_collections  # noqa: PLC0415

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
    import ml_collections  # noqa: PLC0415

    from infinity_jax.transformer.config import SIZE_NAMES  # noqa: PLC0415
    from infinity_jax.transformer.config import size_config as official_size  # noqa: PLC0415

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
        from infinity_jax.training.optimizer import peak_learning_rate  # noqa: PLC0415
        from infinity_jax.training.trainer import model_config  # noqa: PLC0415

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
    from infinity_jax.data.bucketing import make_buckets  # noqa: PLC0415
    from infinity_jax.training.trainer import model_config, vae_config  # noqa: PLC0415
    from infinity_jax.transformer.flops import param_count, train_flops  # noqa: PLC0415

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
        if _path(f"{d}/plan.json").exists() and read_jsonl(f"{d}/validation.jsonl"):
            old = read_json(f"{d}/plan.json")
            if _plan_key(old) != _plan_key(plan["sizes"][n]):
                raise PlanMismatchError(
                    f"{d} was trained with another plan ({old['total_steps']} steps of {old['flops_per_step']:.4g} "
                    f"FLOPs, validation at {[q['steps'] for q in old['points']]}); "
                    f"now {plan['sizes'][n]['total_steps']} "
                    f"steps of {plan['sizes'][n]['flops_per_step']:.4g} FLOPs. Use another --workdir or remove {d}.")
            if _path(f"{d}/config.json").exists():
                diff = _run_diff(read_json(f"{d}/config.json"), json.loads(cfgs[n].to_json_best_effort()))
                if diff:
                    raise PlanMismatchError(f"{d} was trained with another config (config.{', config.'.join(diff)} "
                                            f"differ). Use another --workdir or remove {d}.")
    if not _is_primary():
        return
    write_json(f"{workdir}/sweep.json", plan)
    for n in sizes:
        c = cfgs[n]
        d = f"{workdir}/{n}"
        c = copy.deepcopy(c)
        c.total_steps = plan["sizes"][n]["total_steps"]
        write_json(f"{d}/config.json", json.loads(c.to_json_best_effort()))
        _path(f"{d}/config.py").write_text(_config_py())
        write_json(f"{d}/plan.json", plan["sizes"][n])


# ------------------------------------------------------------------------------------ training
def _validation_record(size: str, pt: dict, plan_size: dict, summary: dict, extra: dict) -> dict:
    rec = {"size": size, "params": plan_size["params"], "flops_per_step": plan_size["flops_per_step"],
           "step": pt["steps"], "point": pt["point"], "nominal_compute": pt["nominal_compute"],
           "compute": pt["compute"], "images_seen": pt["steps"] * plan_size["batch_size"]}
    rec.update(summary)
    rec.update(extra)
    return rec


def train_size(size_dir: str, *, validator_factory=None) -> list[dict]:
    """Train one size through its compute points, validating at each; resumable. Returns its records.

    Every segment is the trainer's own loop (:meth:`Trainer.train` with ``total_steps`` set to the
    point's step, resuming from the checkpoint the previous segment saved); the learning-rate
    schedule spans the size's whole run (the trainer is built with its final ``total_steps``).
    """
    import jax  # noqa: PLC0415
    import ml_collections  # noqa: PLC0415

    from infinity_jax.eval.validation import Validator, summarize  # noqa: PLC0415
    from infinity_jax.training.trainer import Trainer  # noqa: PLC0415

    cfg = ml_collections.ConfigDict(read_json(f"{size_dir}/config.json"))
    plan = read_json(f"{size_dir}/plan.json")
    size = plan["size"]
    cfg.total_steps = int(plan["total_steps"])
    done = {int(r["step"]): r for r in read_jsonl(f"{size_dir}/validation.jsonl")}
    todo = [p for p in plan["points"] if int(p["steps"]) not in done]
    if not todo:
        log.info("size %s: every compute point is validated already", size)
        return [done[k] for k in sorted(done)]
    trainer = Trainer(cfg, size_dir)
    vcfg = cfg.validation
    validator = (validator_factory or Validator)(trainer, vcfg)
    train_s = 0.0
    for pt in todo:
        steps = int(pt["steps"])
        with cfg.unlocked() if hasattr(cfg, "unlocked") else _null():
            trainer.config.total_steps = steps
        t0 = time.perf_counter()
        last = trainer.train()
        train_s += time.perf_counter() - t0
        state = trainer.state
        reached = int(jax.device_get(state["step"]))
        if reached != steps:
            state = _restore_step(trainer, size_dir, steps)
            if state is None:
                log.warning("size %s: the run is at step %d, past the point at step %d, whose checkpoint is gone; "
                            "the point is skipped", size, reached, steps)
                continue
        params = state["ema"] if vcfg.get("use_ema") and "ema" in state else state["params"]
        t1 = time.perf_counter()
        per = validator(params)
        val_s = time.perf_counter() - t1
        summary = summarize(per)
        extra = {"strength": validator.strength, "fixed_strength": validator.fixed,
                 "apply_layers": validator.apply_layers, "seed": validator.seed,
                 "train_loss": float(last.get("loss", float("nan"))) if last else float("nan"),
                 "train_seconds": train_s, "validation_seconds": val_s, "time": time.time()}
        rec = _validation_record(size, pt, plan, summary, extra)
        if _is_primary():
            buf = io.BytesIO()
            np.savez(buf, **{k: np.asarray(v) for k, v in per.items()})
            p = _path(f"{size_dir}/validation/step_{steps:08d}.npz")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(buf.getvalue())
            append_jsonl(f"{size_dir}/validation.jsonl", rec)
        done[steps] = rec
        print(f"[scaling] {size}: step {steps} compute {pt['compute']:.3g} FLOPs | val loss {summary['loss']:.4f} "
              f"± {summary['loss_se']:.4f} bit acc {summary['bit_accuracy']:.4f} | per-scale loss "
              + " ".join(f"{v:.3f}" for v in summary["per_scale_loss"])
              + f" | train {train_s:.0f} s, val {val_s:.1f} s",
              flush=True)
    del trainer, validator
    jax.clear_caches()
    return [done[k] for k in sorted(done)]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _restore_step(trainer, size_dir: str, step: int):
    from infinity_jax.training.checkpoint import Checkpointer  # noqa: PLC0415

    ck = Checkpointer(f"{size_dir}/checkpoints", keep=0, async_save=False)
    try:
        if step not in ck.all_steps():
            return None
        return ck.restore(trainer.abstract_state(), step=step)[1]
    finally:
        ck.close()


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


# ------------------------------------------------------------------------------------ analysis
@dataclasses.dataclass
class SweepData:
    records: list  # validation records (dicts)
    samples: dict  # (size, step) -> per-image metric arrays (may be empty)
    plan: dict     # size -> plan.json


def load_sweep(workdir: str, metric: str = "loss") -> SweepData:
    wd = _path(workdir)
    records, samples, plans = [], {}, {}
    for d in sorted(wd.iterdir()):
        if not (d / "plan.json").exists():
            continue
        plan = read_json(d / "plan.json")
        plans[plan["size"]] = plan
        by_step = {}
        for r in read_jsonl(d / "validation.jsonl"):
            by_step[int(r["step"])] = r  # the last record of a step wins
        for st_, r in sorted(by_step.items()):
            records.append(r)
            p = d / "validation" / f"step_{st_:08d}.npz"
            if p.exists():
                with np.load(io.BytesIO(p.read_bytes())) as z:
                    samples[(r["size"], st_)] = {k: z[k] for k in z.files}
    if not records:
        raise FileNotFoundError(f"no validation records under {workdir} "
                                "(run `python -m infinity_jax.scaling run` first)")
    return SweepData(records, samples, plans)


def _group_by_point(records, key="point"):
    groups: dict = {}
    for r in records:
        if r.get(key) is None:
            continue
        groups.setdefault(int(r[key]), []).append(r)
    return groups


def _final_records(records, plans):
    """Each size's record at the last step of its plan (sizes still training are left out)."""
    return [r for r in records if r["size"] in plans and int(r["step"]) == int(plans[r["size"]]["total_steps"])]


def _bootstrap_metric(data: SweepData, recs: list, metric: str, n_boot: int, seed: int = 0):
    """(n_boot, len(recs)) replicate means of ``metric``, resampling held-out images (paired: the
    same resampled image set for every record, since every size sees the same held-out set)."""
    arrs = [data.samples.get((r["size"], int(r["step"])), {}).get(metric) for r in recs]
    if n_boot <= 0 or any(a is None for a in arrs):
        return None
    n = min(len(a) for a in arrs)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    return np.stack([np.asarray(a[:n], np.float64)[idx].mean(axis=1) for a in arrs], axis=1)


def _fit(x, y, reps, sigma=None):
    from infinity_jax.eval.scaling_fit import bootstrap_power_law, fit_power_law, residual_bootstrap  # noqa: PLC0415

    f = fit_power_law(x, y, sigma=sigma)
    if reps is None:
        reps = residual_bootstrap(f, 200) if f.dof > 0 else None
        f.boot_kind = "residual" if reps is not None else "none"
    else:
        f.boot_kind = "held-out images (paired)"
    if reps is not None:
        f2 = bootstrap_power_law(f, x, reps, sigma=sigma)
        f2.boot_kind = f.boot_kind
        f = f2
    return f


def analyze(workdir: str, out: str | None = None, metric: str = "loss", n_boot: int = 200) -> dict:
    """Fits, plots and tables of a sweep (see the module docstring). Returns the fits as a dict."""
    from infinity_jax.eval import scaling_fit as sf  # noqa: PLC0415

    data = load_sweep(workdir, metric)
    out = out or f"{workdir}/analysis"
    _path(out).mkdir(parents=True, exist_ok=True)
    recs = data.records
    fits: dict[str, Any] = {"metric": metric, "loss_vs_params": [], "loss_vs_compute": None,
                            "compute_optimal": None, "bit_error_vs_params": None}
    sizes_order = sorted(data.plan, key=lambda n: data.plan[n]["params"])

    # loss vs parameters at every compute point with >= 3 sizes; iso_steps: also at the last step
    groups = _group_by_point(recs)
    cands = [(f"compute point {k} (C = {g[0]['nominal_compute']:.3g} FLOPs)", k, g) for k, g in sorted(groups.items())]
    if any(r.get("point") is None for r in recs):
        cands.append(("last step of every size (equal data)", "final", _final_records(recs, data.plan)))
    for label, key, g in cands:
        g = sorted(g, key=lambda r: r["params"])
        if len(g) < 3:
            continue
        x = np.array([r["params"] for r in g], np.float64)
        y = np.array([r[metric] for r in g], np.float64)
        se = np.array([r.get(f"{metric}_se", np.nan) for r in g]) / y
        try:
            f = _fit(x, y, _bootstrap_metric(data, g, metric, n_boot))
        except ValueError as e:
            log.warning("fit of %s failed: %s", label, e)
            continue
        fits["loss_vs_params"].append({"label": label, "point": key, "sizes": [r["size"] for r in g],
                                       "compute": [r["compute"] for r in g], "fit": f, "x": x, "y": y,
                                       "rel_se": se})
    headline = None
    if fits["loss_vs_params"]:
        full = [e for e in fits["loss_vs_params"] if len(e["sizes"]) == len(sizes_order)]
        headline = (full or fits["loss_vs_params"])[-1]
        if any(e["point"] == "final" for e in fits["loss_vs_params"]):
            headline = [e for e in fits["loss_vs_params"] if e["point"] == "final"][0]
    fits["headline_params"] = headline

    # loss vs compute: the frontier over the compute points
    grid = [r for r in recs if r.get("nominal_compute") is not None]
    fr = sf.frontier(grid, loss_key=metric) if grid else None
    if fr is not None and len(fr.compute) >= 3:
        win = []
        for c, s in zip(fr.compute, fr.size):
            win.append(next(r for r in grid if r["size"] == s and abs(r["compute"] - c) <= 1e-9 * c))
        reps = _bootstrap_metric(data, win, metric, n_boot)
        try:
            fits["loss_vs_compute"] = {"fit": _fit(fr.compute, fr.loss, reps), "frontier": fr}
        except ValueError as e:
            log.warning("compute fit failed: %s", e)
    if fr is not None and len(set(fr.size)) >= 2 and len(fr.compute) >= 2:
        try:
            fits["compute_optimal"] = sf.fit_simple_power_law(fr.compute, fr.params)
        except ValueError:
            pass
        fits["compute_optimal_table"] = list(zip(fr.compute.tolist(), fr.size, fr.params.tolist(), fr.loss.tolist()))

    # bit error (1 - bit accuracy) vs parameters at the headline point
    if headline is not None:
        g = sorted(_records_of(recs, headline), key=lambda r: r["params"])
        err = np.array([1 - r["bit_accuracy"] for r in g])
        try:
            reps = _bootstrap_metric(data, g, "bit_accuracy", n_boot)
            fits["bit_error_vs_params"] = {"fit": _fit(np.array([r["params"] for r in g]), err,
                                                       None if reps is None else 1 - reps),
                                           "sizes": [r["size"] for r in g]}
        except ValueError as e:
            log.warning("bit-error fit failed: %s", e)

    _write_tables(out, data, fits, metric, sizes_order)
    _plots(out, data, fits, metric, sizes_order)
    _train_curves(workdir, out, data, sizes_order)
    return fits


def _records_of(recs, entry):
    """The records behind a loss-vs-params entry, in its order."""
    out = []
    for s, c in zip(entry["sizes"], entry["compute"]):
        out.append(next(r for r in recs if r["size"] == s and r["compute"] == c))
    return out


def _fmt_fit(f) -> dict:
    d = f.to_dict()
    d["bootstrap"] = getattr(f, "boot_kind", "none")
    return d


def _write_tables(out: str, data: SweepData, fits: dict, metric: str, sizes_order: list) -> None:
    recs = sorted(data.records, key=lambda r: (r["params"], r["step"]))
    K = max(len(r.get("per_scale_loss", [])) for r in recs)
    cols = ["size", "params", "step", "images_seen", "compute", "nominal_compute", "loss", "loss_se", "loss_uniform",
            "bit_accuracy", "bit_accuracy_se", "token_accuracy", "train_loss", "n_images"]
    cols += [f"loss_scale{k}" for k in range(K)] + [f"bit_acc_scale{k}" for k in range(K)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in recs:
        row = [r.get(c, "") for c in cols[:14]]
        row += list(r.get("per_scale_loss", [])) + [""] * (K - len(r.get("per_scale_loss", [])))
        row += list(r.get("per_scale_bit_accuracy", [])) + [""] * (K - len(r.get("per_scale_bit_accuracy", [])))
        w.writerow(row)
    _path(f"{out}/scaling_points.csv").write_text(buf.getvalue())

    rows = []
    for e in fits["loss_vs_params"]:
        rows.append({"fit": f"{metric} vs params", "at": e["label"], **_fmt_fit(e["fit"])})
    if fits.get("loss_vs_compute"):
        rows.append({"fit": f"{metric} vs compute (frontier)", "at": "compute points",
                     **_fmt_fit(fits["loss_vs_compute"]["fit"])})
    if fits.get("bit_error_vs_params"):
        rows.append({"fit": "1 - bit accuracy vs params", "at": fits["headline_params"]["label"],
                     **_fmt_fit(fits["bit_error_vs_params"]["fit"])})
    if rows:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        _path(f"{out}/scaling_fits.csv").write_text(buf.getvalue())
    write_json(f"{out}/fits.json", {"metric": metric, "fits": rows, "compute_optimal": fits.get("compute_optimal"),
                                    "compute_optimal_table": fits.get("compute_optimal_table")})

    md = [f"# Scaling sweep: validation {metric} (BSC strength {recs[0].get('strength', 0.2)}, "
          f"{recs[0].get('n_images', '?')} held-out images)", ""]
    md += ["## Sizes", "", "| size | params | FLOPs/step | steps (last) | compute (last) | val loss | bit acc |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for n in sizes_order:
        p = data.plan[n]
        last = max((r for r in recs if r["size"] == n), key=lambda r: r["step"], default=None)
        if last is None:
            md.append(f"| {n} | {p['params']:,} | {p['flops_per_step']:.3g} | - | - | - | - |")
            continue
        md.append(f"| {n} | {p['params']:,} | {p['flops_per_step']:.3g} | {last['step']} | {last['compute']:.3g} | "
                  f"{last[metric]:.4f} ± {last.get(metric + '_se', float('nan')):.4f} | {last['bit_accuracy']:.4f} |")
    md += ["", "## Validation loss at each compute point", ""]
    pts = sorted({(r["point"], r["nominal_compute"]) for r in recs if r.get("point") is not None})
    md.append("| compute | " + " | ".join(sizes_order) + " |")
    md.append("|---:|" + "---:|" * len(sizes_order))
    for k, c in pts:
        cells = []
        for n in sizes_order:
            r = next((r for r in recs if r["size"] == n and r.get("point") == k), None)
            cells.append(f"{r[metric]:.4f}" if r else "")
        md.append(f"| {c:.3g} | " + " | ".join(cells) + " |")
    md += ["", "## Power-law fits  L = E + A x^-alpha", "",
           "Standard errors from the fit's covariance (±); intervals: 95 % bootstrap "
           "(held-out images resampled, paired across sizes).", "",
           "| fit | at | alpha | E | A | n | R²(log) |", "|---|---|---|---|---|---:|---:|"]

    def cell(r, k):
        v, s, lo, hi = r[k], r[f"{k}_se"], r[f"{k}_ci_lo"], r[f"{k}_ci_hi"]
        txt = f"{v:.4g}"
        if np.isfinite(s):
            txt += f" ± {s:.2g}"
        if np.isfinite(lo):
            txt += f" [{lo:.3g}, {hi:.3g}]"
        return txt

    for r in rows:
        note = " (no decrease: loss does not fall with x here)" if "alpha=0" in r["at_bound"] else ""
        note += " (E at 0)" if "E=0" in r["at_bound"] else ""
        md.append(f"| {r['fit']} | {r['at']}{note} | {cell(r, 'alpha')} | {cell(r, 'E')} | {cell(r, 'A')} | {r['n']} | "
                  f"{r['r2_log']:.4f} |")
    h = fits.get("headline_params")
    if h is not None:
        g = sorted(_records_of(data.records, h), key=lambda r: r["params"])
        pairs = []
        for a, b in zip(g, g[1:]):
            sa = data.samples.get((a["size"], int(a["step"])), {}).get(metric)
            sb = data.samples.get((b["size"], int(b["step"])), {}).get(metric)
            if sa is not None and sb is not None and len(sa) == len(sb) and len(sa) > 1:
                d = np.asarray(sb, np.float64) - np.asarray(sa, np.float64)
                pairs.append((a["size"], b["size"], float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))))
        if pairs:
            md += ["", f"## Does the loss fall with size? ({h['label']})", "",
                   "Paired differences over the same held-out images (next size minus this size):", "",
                   "| from | to | Δ loss | SE | Δ / SE |", "|---|---|---:|---:|---:|"]
            md += [f"| {a} | {b} | {m:+.5f} | {se:.5f} | {m / se:+.1f} |" for a, b, m, se in pairs]
    co = fits.get("compute_optimal_table")
    if co:
        md += ["", "## Compute-efficient frontier", "", "| compute | best size | params | loss |",
               "|---:|---|---:|---:|"]
        md += [f"| {c:.3g} | {s} | {p:,.0f} | {l_:.4f} |" for c, s, p, l_ in co]
        if fits.get("compute_optimal"):
            a = fits["compute_optimal"]
            md += ["", f"Compute-optimal size N_opt ∝ C^a: a = {a['a']:.3f}"
                   + (f" ± {a['a_se']:.2f}" if np.isfinite(a["a_se"]) else "") + f" ({a['n']} points; coarse: the "
                   "optimum can only be one of the sizes)."]
    _path(f"{out}/scaling.md").write_text("\n".join(md) + "\n")


def _alpha_text(f) -> str:
    txt = f"α = {f.alpha:.3f}"
    if np.isfinite(f.se.get("alpha", float("nan"))):
        txt += f" ± {f.se['alpha']:.3f}"
    if "alpha" in f.ci:
        txt += f" [{f.ci['alpha'][0]:.2f}, {f.ci['alpha'][1]:.2f}]"
    return txt


def _plain_ticks(ax) -> None:
    from matplotlib.ticker import ScalarFormatter  # noqa: PLC0415

    for fmt in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        sf_ = ScalarFormatter()
        sf_.set_scientific(False)
        fmt(sf_)


def _savefig(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    _path(path).write_bytes(buf.getvalue())


def _plots(out: str, data: SweepData, fits: dict, metric: str, sizes_order: list) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    recs = data.records
    cmap = plt.get_cmap("viridis")
    colors = {n: cmap(i / max(len(sizes_order) - 1, 1)) for i, n in enumerate(sizes_order)}

    # 1. loss vs parameters (each compute point; headline fit)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    entries = fits["loss_vs_params"]
    pcm = plt.get_cmap("plasma")
    for i, e in enumerate(entries):
        c = pcm(0.15 + 0.7 * i / max(len(entries) - 1, 1))
        se = e["rel_se"] * e["y"]
        ax.errorbar(e["x"], e["y"], yerr=np.nan_to_num(se), fmt="o", color=c, ms=5, capsize=2,
                    label=e["label"].replace("compute point ", "pt "))
        if "alpha=0" in e["fit"].at_bound:  # loss does not fall with size at this compute: no curve
            ax.plot(e["x"], e["y"], ":", color=c, lw=0.8)
            continue
        xs = np.geomspace(e["x"].min() / 1.3, e["x"].max() * 1.3, 100)
        ax.plot(xs, e["fit"].predict(xs), "-", color=c, lw=1.2 if e is not fits["headline_params"] else 2.2,
                alpha=0.9)
    h = fits.get("headline_params")
    if h is not None:
        f = h["fit"]
        ax.axhline(f.E, color="gray", ls=":", lw=1)
        ax.set_title(f"val {metric} vs parameters ({h['label']})\n{_alpha_text(f)}, E = {f.E:.3f}", fontsize=9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax)
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"validation {metric} (BSC 0.2)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    # 2. loss vs compute: per-size curves and the frontier fit
    ax = axes[1]
    for n in sizes_order:
        rs = sorted((r for r in recs if r["size"] == n), key=lambda r: r["compute"])
        if rs:
            ax.plot([r["compute"] for r in rs], [r[metric] for r in rs], "o-", color=colors[n], ms=4,
                    label=f"{n} ({data.plan[n]['params'] / 1e6:.2g}M)")
    lc = fits.get("loss_vs_compute")
    if lc:
        f, fr = lc["fit"], lc["frontier"]
        xs = np.geomspace(fr.compute.min() / 1.3, fr.compute.max() * 1.3, 100)
        ax.plot(xs, f.predict(xs), "k--", lw=1.5, label=f"frontier fit: {_alpha_text(f)}")
        ax.axhline(f.E, color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax)
    ax.set_xlabel("training compute (FLOPs, analytic)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("val loss vs compute", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    _savefig(fig, f"{out}/loss_scaling.png")
    plt.close(fig)

    # 3. bit accuracy vs compute and params
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for n in sizes_order:
        rs = sorted((r for r in recs if r["size"] == n), key=lambda r: r["compute"])
        if rs:
            axes[0].plot([r["compute"] for r in rs], [r["bit_accuracy"] for r in rs], "o-", color=colors[n], ms=4,
                         label=n)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("training compute (FLOPs)")
    axes[0].set_ylabel("validation bit accuracy")
    axes[0].legend(fontsize=7)
    axes[0].grid(True, alpha=0.3)
    if h is not None:
        g = sorted(_records_of(recs, h), key=lambda r: r["params"])
        axes[1].plot([r["params"] for r in g], [r["bit_accuracy"] for r in g], "o-", color="C3", label="all scales")
        K = len(g[0]["per_scale_bit_accuracy"])
        for k in range(K):
            axes[1].plot([r["params"] for r in g], [r["per_scale_bit_accuracy"][k] for r in g], ".--",
                         color=plt.get_cmap("cool")(k / max(K - 1, 1)), lw=0.8, label=f"scale {k}")
        axes[1].set_title(f"bit accuracy vs parameters ({h['label']})", fontsize=9)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("parameters")
    axes[1].legend(fontsize=7)
    axes[1].grid(True, alpha=0.3)
    fig.tight_layout()
    _savefig(fig, f"{out}/bit_accuracy.png")
    plt.close(fig)

    # 4. per-scale validation loss vs parameters at the headline point
    if h is not None:
        g = sorted(_records_of(recs, h), key=lambda r: r["params"])
        K = len(g[0]["per_scale_loss"])
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for k in range(K):
            ax.plot([r["params"] for r in g], [r["per_scale_loss"][k] for r in g], "o-",
                    color=plt.get_cmap("cool")(k / max(K - 1, 1)),
                    label=f"scale {k} {tuple(data.plan[g[0]['size']]['scales'][k][1:])}")
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("validation loss of the scale")
        ax.set_title(f"per-scale validation loss ({h['label']})", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        _savefig(fig, f"{out}/per_scale_loss.png")
        plt.close(fig)


def _train_curves(workdir: str, out: str, data: SweepData, sizes_order: list) -> bool:
    """Training loss (from the trainer's metrics.jsonl, smoothed) against compute, one line per size."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cmap = plt.get_cmap("viridis")
    drawn = False
    for i, n in enumerate(sizes_order):
        rows = read_jsonl(f"{workdir}/{n}/metrics.jsonl")
        pts = sorted({int(r["step"]): float(r["loss"]) for r in rows if "loss" in r and "step" in r}.items())
        if len(pts) < 2:
            continue
        steps = np.array([p[0] for p in pts], np.float64)
        loss = np.array([p[1] for p in pts])
        sm, acc = np.empty_like(loss), loss[0]
        for j, v in enumerate(loss):  # EMA with bias-free start
            acc = v if j == 0 else 0.95 * acc + 0.05 * v
            sm[j] = acc
        ax.plot(steps * data.plan[n]["flops_per_step"], sm, color=cmap(i / max(len(sizes_order) - 1, 1)), lw=1.2,
                label=n)
        drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute (FLOPs, analytic)")
        ax.set_ylabel("training loss (EMA 0.95; BSC 0.3, caption dropout)")
        _plain_ticks(ax)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        _savefig(fig, f"{out}/train_curves.png")
    plt.close(fig)
    return drawn


def print_summary(fits: dict, out: str) -> None:
    h = fits.get("headline_params")
    if h is not None:
        print(f"loss vs parameters ({h['label']}): {h['fit'].describe()}")
    lc = fits.get("loss_vs_compute")
    if lc:
        print(f"loss vs compute (frontier): {lc['fit'].describe()}")
    if fits.get("compute_optimal"):
        a = fits["compute_optimal"]
        print(f"compute-optimal size: N_opt ~ C^{a['a']:.3f}")
    print(f"wrote {out}/scaling.md, scaling_points.csv, scaling_fits.csv, fits.json, loss_scaling.png, "
          f"bit_accuracy.png, per_scale_loss.png, train_curves.png")


# ----------------------------------------------------------------------------------------- CLI
def main(argv) -> None:
    if len(argv) < 2 or argv[1] not in ("run", "plan", "analyze"):
        raise app.UsageError("usage: python -m infinity_jax.scaling {run,plan,analyze} --workdir DIR [--config ...]")
    cmd = argv[1]
    if len(argv) > 2:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[2:])}")
    logging.getLogger().setLevel(logging.INFO)
    for noisy in ("absl", "orbax", "jax._src", "grain", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    workdir = _WORKDIR.value
    if not workdir:
        raise app.UsageError("--workdir is required")
    if "://" not in workdir:
        workdir = os.path.abspath(os.path.expanduser(workdir))
    if cmd == "analyze":
        out = _OUT.value or f"{workdir}/analysis"
        fits = analyze(workdir, out, metric=_METRIC.value, n_boot=_NBOOT.value)
        print(_path(f"{out}/scaling.md").read_text())
        print_summary(fits, out)
        return

    from infinity_jax.training.trainer import maybe_initialize_distributed  # noqa: PLC0415

    maybe_initialize_distributed()
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required for run / plan, e.g. --config configs/scaling_toy.py")
    sizes = _SIZES.value or [s for s in str(sweep_section(config)["sizes"]).split(",") if s]
    plan, cfgs = plan_sweep(config, sizes, _BUDGET.value, _MODE.value, _POINTS.value)
    only = _ONLY.value or sizes
    unknown = sorted(set(only) - set(sizes))
    if unknown:
        raise app.UsageError(f"--only {unknown} are not sizes of the sweep {sizes}")
    try:
        write_plan(workdir, plan, cfgs, only if cmd == "run" else sizes)
    except PlanMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"[scaling] {plan['mode']} sweep, budget {plan['budget']:.3g} FLOPs, {plan['points']} compute points:")
    for n, p in plan["sizes"].items():
        print(f"  {n:>10s}: {p['params']:>14,} params, {p['flops_per_step']:.3g} FLOPs/step, {p['total_steps']} steps; "
              f"validation at steps {[q['steps'] for q in p['points']]}")
    if cmd == "plan":
        print("[scaling] one job per size:")
        for c in job_commands(sys.argv, sizes):
            print("  " + c)
        return
    t0 = time.perf_counter()
    for n in only:
        t1 = time.perf_counter()
        train_size(f"{workdir}/{n}")
        print(f"[scaling] size {n} done in {time.perf_counter() - t1:.0f} s", flush=True)
    print(f"[scaling] {len(only)} sizes in {time.perf_counter() - t0:.0f} s; "
          f"analyse with: python -m infinity_jax.scaling analyze --workdir {workdir}", flush=True)


if __name__ == "__main__":
    app.run(main)
