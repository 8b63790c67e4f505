"""Training one size of a sweep to its last step, validating the held-out set at each compute point (a hook)."""
from __future__ import annotations

import io
import logging
import time

import jax
import ml_collections
import numpy as np

from infinity_jax.eval.validation import Validator, summarize
from infinity_jax.scaling.files import is_primary, as_path, append_jsonl, read_json, read_jsonl
from infinity_jax.training.checkpoint import Checkpointer
from infinity_jax.training.loop import Hook
from infinity_jax.training.trainer import Trainer

log = logging.getLogger("infinity_jax.scaling")


def _validation_record(size: str, pt: dict, plan_size: dict, summary: dict, extra: dict) -> dict:
    rec = {"size": size, "params": plan_size["params"], "flops_per_step": plan_size["flops_per_step"],
           "step": pt["steps"], "point": pt["point"], "nominal_compute": pt["nominal_compute"],
           "compute": pt["compute"], "images_seen": pt["steps"] * plan_size["batch_size"]}
    rec.update(summary)
    rec.update(extra)
    return rec


class SweepStopped(RuntimeError):
    """SIGTERM / SIGINT stopped a size's run (its checkpoint is saved; the same command resumes)."""

    def __init__(self, size: str, signum: int):
        super().__init__(f"size {size} stopped by signal {signum}; checkpoint saved, run the same command to resume")
        self.signum = signum


def train_size(size_dir: str, *, validator_factory=None) -> list[dict]:
    """Train one size through its compute points, validating at each; resumable. Returns its records.

    One :meth:`Trainer.train` to the size's final step (the learning-rate schedule spans it) with
    a validation hook at the steps of the points not validated yet; each such step is also
    checkpointed. A point the run had passed when it was last stopped (killed after the checkpoint
    of its step, before its record) is validated from that step's checkpoint.
    """
    cfg = ml_collections.ConfigDict(read_json(f"{size_dir}/config.json"))
    plan = read_json(f"{size_dir}/plan.json")
    size = plan["size"]
    cfg.total_steps = int(plan["total_steps"])
    done = {int(r["step"]): r for r in read_jsonl(f"{size_dir}/validation.jsonl")}
    todo = {int(p["steps"]): p for p in plan["points"] if int(p["steps"]) not in done}
    if not todo:
        log.info("size %s: every compute point is validated already", size)
        return [done[k] for k in sorted(done)]
    trainer = Trainer(cfg, size_dir)
    vcfg = cfg.validation
    validator = (validator_factory or Validator.for_trainer)(trainer, vcfg)
    clock = {"start": time.perf_counter(), "validation": 0.0}

    def validate(steps: int, state, last: dict) -> None:
        pt = todo[steps]
        params = state["ema"] if vcfg.get("use_ema") and "ema" in state else state["params"]
        t1 = time.perf_counter()
        per = validator(params)
        val_s = time.perf_counter() - t1
        clock["validation"] += val_s
        train_s = time.perf_counter() - clock["start"] - clock["validation"]
        summary = summarize(per)
        extra = {"strength": validator.strength, "fixed_strength": validator.fixed,
                 "apply_layers": validator.apply_layers, "seed": validator.seed,
                 "train_loss": float(last.get("loss", float("nan"))) if last else float("nan"),
                 "train_seconds": train_s, "validation_seconds": val_s, "time": time.time()}
        rec = _validation_record(size, pt, plan, summary, extra)
        if is_primary():
            buf = io.BytesIO()
            np.savez(buf, **{k: np.asarray(v) for k, v in per.items()})
            p = as_path(f"{size_dir}/validation/step_{steps:08d}.npz")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(buf.getvalue())
            append_jsonl(f"{size_dir}/validation.jsonl", rec)
        done[steps] = rec
        print(f"[scaling] {size}: step {steps} compute {pt['compute']:.3g} FLOPs | val loss {summary['loss']:.4f} "
              f"± {summary['loss_se']:.4f} bit acc {summary['bit_accuracy']:.4f} | per-scale loss "
              + " ".join(f"{v:.3f}" for v in summary["per_scale_loss"])
              + f" | train {train_s:.0f} s, val {val_s:.1f} s",
              flush=True)

    hook = Hook(lambda step, state: validate(step, state, trainer.loop.last), at=tuple(sorted(todo)))
    trainer.train(hooks=(hook,), save_at=tuple(sorted(todo)))
    if trainer.stopped_by:
        raise SweepStopped(size, trainer.stopped_by)
    for steps in sorted(set(todo) - set(done)):  # passed before this run started
        state = _restore_step(trainer, size_dir, steps)
        if state is None:
            log.warning("size %s: the run is past the point at step %d, whose checkpoint is gone; the point is "
                        "skipped", size, steps)
            continue
        validate(steps, state, {})
    jax.clear_caches()
    return [done[k] for k in sorted(done)]


def _restore_step(trainer, size_dir: str, step: int):
    ck = Checkpointer(f"{size_dir}/checkpoints", keep=0, async_save=False)
    try:
        if step not in ck.all_steps():
            return None
        return ck.restore(trainer.abstract_state(), step=step)[1]
    finally:
        ck.close()

