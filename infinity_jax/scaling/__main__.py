"""The command line: ``python -m infinity_jax.scaling {run,plan,analyze} --workdir DIR [--config ...]``."""
from __future__ import annotations

import logging
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from infinity_jax.scaling.analyze import analyze
from infinity_jax.scaling.files import as_path
from infinity_jax.scaling.plan import PlanMismatchError, job_commands, plan_sweep, sweep_section, write_plan
from infinity_jax.scaling.report import print_summary
from infinity_jax.scaling.run import SweepStopped, train_size
from infinity_jax.training.trainer import maybe_initialize_distributed

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
        print(as_path(f"{out}/scaling.md").read_text())
        print_summary(fits, out)
        return

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
        try:
            train_size(f"{workdir}/{n}")
        except SweepStopped as e:
            print(f"[scaling] {e}", flush=True)
            sys.exit(128 + e.signum)
        print(f"[scaling] size {n} done in {time.perf_counter() - t1:.0f} s", flush=True)
    print(f"[scaling] {len(only)} sizes in {time.perf_counter() - t0:.0f} s; "
          f"analyse with: python -m infinity_jax.scaling analyze --workdir {workdir}", flush=True)


def run() -> None:
    """The ``infinity-scaling`` command (same as ``python -m infinity_jax.scaling``)."""
    app.run(main)


if __name__ == "__main__":
    run()
