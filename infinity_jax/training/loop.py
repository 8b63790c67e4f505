"""The one training loop: restore-or-init, steps, checkpoints, metrics, hooks, a clean close.

Every trainer (Infinity, the tokenizer, the text encoder's pre-training) runs through
:meth:`TrainLoop.run` and supplies only a :class:`Task`: its state, its batches, its step and its
metrics. The loop owns the rest:

* the workdir lock (:class:`WorkdirLock`, process 0, local workdirs) for the whole run;
* restore of the latest good checkpoint (state + data iterator + meta) or a fresh state;
* the step loop; the metrics of step ``s`` are read after step ``s + 1`` is dispatched (no
  device sync per step) and written by :class:`MetricsLogger`;
* hooks (:class:`Hook`): callables run every N steps or at given steps with ``(step, state)``;
* checkpoints every ``checkpoint_every`` steps, at ``save_at`` steps, at the last step and on
  SIGTERM / SIGINT (:class:`StopSignals`: the run stops at the step boundary and
  :attr:`TrainLoop.stopped_by` is the signal); a step whose loss, gradient norm or parameters are
  not finite is never saved;
* the non-finite guard (:class:`NonFiniteGuard`): too many bad steps in a row raise
  :class:`DivergedError` after the close;
* the close, on success, error and signal: checkpointer waited for and closed, logger closed,
  lock released.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

from infinity_jax.training.checkpoint import Checkpointer
from infinity_jax.training.metrics import MetricsLogger, scalar_metrics
from infinity_jax.training.preemption import StopSignals
from infinity_jax.training.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """Too many steps in a row with a non-finite loss or gradient norm (the run stops)."""


class NonFiniteGuard:
    """Counts steps whose loss or gradient norm is not finite.

    ``total``: all such steps of the run's history; ``run``: how many in a row up to the last
    step; ``diverged`` once ``run`` reaches ``max_in_a_row``. A step is bad when its metrics hold
    ``nonfinite`` (set by a step that skipped its update) or a non-finite ``loss`` / ``grad_norm``.
    """

    def __init__(self, max_in_a_row: int, advice: str = "lower the learning rate"):
        self.max_in_a_row = max(1, max_in_a_row)
        self.advice = advice
        self.total = self.run = 0
        self.first_bad = None
        self.last: dict = {}

    def update(self, step: int, m: dict) -> None:
        """Read one logged step's metrics (adds ``nonfinite_total`` to them)."""
        bad = bool(m.get("nonfinite", 0.0)) or any(not math.isfinite(m[k]) for k in ("loss", "grad_norm") if k in m)
        self.total += bad
        self.run = self.run + 1 if bad else 0
        if bad and self.run == 1:
            self.first_bad = step
        self.last = {"step": step, "loss": m.get("loss"), "grad_norm": m.get("grad_norm")}
        m["nonfinite_total"] = float(self.total)

    @property
    def diverged(self) -> bool:
        return self.run >= self.max_in_a_row

    def message(self, latest_checkpoint: int | None) -> str:
        ck = (f"the newest checkpoint (step {latest_checkpoint}) is finite and kept" if latest_checkpoint is not None
              else "no checkpoint was saved")
        return (f"training diverged: {self.run} steps in a row (steps {self.first_bad}..{self.last['step']}) had a "
                f"non-finite loss ({self.last['loss']}) or gradient norm ({self.last['grad_norm']}); their updates "
                f"were skipped and {ck}; {self.advice}")


@dataclasses.dataclass
class Hook:
    """``fn(step, state) -> dict | None`` run after ``step`` when ``step % every == 0`` or ``step in at``
    (before that step's checkpoint). A returned dict is logged at ``step`` (printed as
    ``line(step, metrics)`` when given) and merged into the loop's last metrics."""

    fn: Callable[[int, Any], dict | None]
    every: int = 0
    at: tuple[int, ...] = ()
    line: Callable[[int, dict], str] | None = None

    def due(self, step: int) -> bool:
        return bool(self.every and step % self.every == 0) or step in self.at


def _nothing(*args) -> None:
    return None


@dataclasses.dataclass
class Task:
    """What a trainer supplies to :meth:`TrainLoop.run`.

    batches: ``() -> iterator`` of host batches, called with the workdir locked; its ``iterator``
      attribute, when present, is the checkpointed data position (a Grain iterator).
    init_state / abstract_state: a fresh train state / its ShapeDtypeStructs (restore target).
    step: ``(state, host batch, step number) -> (state, device metrics)``; ``state`` is donated.
    metrics: ``(step, host scalar metrics, host batch, seconds) -> metrics to log`` (timing,
      throughput, counters); the default logs ``step_time``.
    meta: ``() -> dict`` added to each checkpoint's meta; restored: ``meta -> None`` on resume.
    start: ``(step, resumed, logger)`` after restore-or-init (``resumed``: "resumed from DIR/STEP"
      or None): the trainer's first lines, ahead-of-time compilation.
    close: ``(last metrics, logger)`` just before the logger closes (success, error or signal).
    """

    batches: Callable[[], Iterator]
    init_state: Callable[[], Any]
    abstract_state: Callable[[], Any]
    step: Callable[[Any, Any, int], tuple[Any, Any]]
    metrics: Callable[[int, dict, Any, float], dict] | None = None
    meta: Callable[[], dict] = dict
    restored: Callable[[dict], None] = _nothing
    start: Callable[[int, str | None, MetricsLogger], None] = _nothing
    close: Callable[[dict, MetricsLogger], None] = _nothing


@dataclasses.dataclass
class LoopSettings:
    """The loop's knobs (see :meth:`from_config` for the config keys)."""

    total_steps: int
    checkpoint_every: int = 0
    keep: int = 3
    async_save: bool = True
    max_nonfinite_steps: int = 10
    diverged_advice: str = "lower the learning rate"
    step_sleep: float = 0.0
    config_json: dict | None = None
    logger: dict = dataclasses.field(default_factory=dict)  # MetricsLogger keyword arguments

    @classmethod
    def from_config(cls, c, diverged_advice: str = "lower the learning rate", **logger) -> "LoopSettings":
        """From a run config: ``total_steps``, ``checkpoint.{every, keep, async_save}``,
        ``optim.max_nonfinite_steps``, ``debug.step_sleep``, ``log.{tensorboard, progress, every}``;
        ``logger``: more :class:`MetricsLogger` arguments."""
        debug = c.get("debug") or {}
        return cls(total_steps=int(c.total_steps), checkpoint_every=int(c.checkpoint.every),
                   keep=int(c.checkpoint.keep), async_save=bool(c.checkpoint.async_save),
                   max_nonfinite_steps=int(c.optim.get("max_nonfinite_steps", 10)), diverged_advice=diverged_advice,
                   step_sleep=float(debug.get("step_sleep", 0.0) or 0.0),
                   config_json=json.loads(c.to_json_best_effort()),
                   logger={"tensorboard": bool(c.log.tensorboard), "progress": bool(c.log.progress),
                           "print_every": int(c.log.every), **logger})


def default_metrics(step: int, m: dict, batch, seconds: float) -> dict:
    del step, batch
    return {**m, "step_time": seconds}


def params_finite(state: dict) -> bool:
    """Whether every parameter (and EMA) of ``state`` is finite (one fused reduction on device)."""
    tree = {k: state[k] for k in ("params", "ema") if k in state}
    return bool(_all_finite(tree))


@jax.jit
def _all_finite(tree):
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


class TrainLoop:
    """Runs a :class:`Task` in ``workdir`` (None: no lock, checkpoints or metric files).

    After :meth:`run`: ``state`` (the final state), ``last`` (the last logged metrics),
    ``stopped_by`` (the signal that stopped the run, or None), ``start_step``.
    """

    def __init__(self, workdir: str | None, settings: LoopSettings):
        self.workdir = workdir
        self.settings = settings
        self.state = None
        self.last: dict = {}
        self.stopped_by: int | None = None
        self.start_step = 0
        self.checkpointer: Checkpointer | None = None

    def run(self, task: Task, hooks: tuple[Hook, ...] = (), save_at: tuple[int, ...] = ()) -> dict:
        """Run (or resume) to ``settings.total_steps``; returns the last logged metrics."""
        self.stopped_by, self.last, self.state = None, {}, None
        lock = None
        if self.workdir and jax.process_index() == 0 and "://" not in self.workdir:
            lock = WorkdirLock(self.workdir).acquire()
        try:
            return self._run(task, tuple(hooks), set(int(s) for s in save_at))
        finally:
            if lock is not None:
                lock.release()

    def _run(self, task: Task, hooks: tuple[Hook, ...], save_at: set[int]) -> dict:
        s = self.settings
        primary = jax.process_index() == 0
        ckpt = None
        if self.workdir:
            ckpt = Checkpointer(os.path.join(self.workdir, "checkpoints"), keep=s.keep, async_save=s.async_save)
        self.checkpointer = ckpt
        logger = None
        stop_signals = None
        guard = NonFiniteGuard(s.max_nonfinite_steps, s.diverged_advice)
        metrics_fn = task.metrics or default_metrics
        try:
            batches = task.batches()
            data_iter = getattr(batches, "iterator", None)
            restored = ckpt.restore(task.abstract_state(), data_iter) if ckpt and ckpt.all_steps() else None
            if restored is not None:
                step, state, meta = restored
                guard.total = int(meta.get("nonfinite_total", 0))
                task.restored(meta)
                resumed = f"resumed from {ckpt.directory}/{step}"
            else:
                state, step, resumed = task.init_state(), 0, None
            self.start_step = step
            total = s.total_steps
            logger = MetricsLogger(self.workdir, total_steps=total, start_step=step, is_primary=primary, **s.logger)
            task.start(step, resumed, logger)
            pending = None
            t_prev = time.perf_counter()

            def flush() -> bool:
                """Write the pending step's metrics; False once the run has diverged."""
                nonlocal pending, t_prev
                if pending is None:
                    return not guard.diverged
                pstep, metrics, batch = pending
                pending = None
                m = scalar_metrics(jax.device_get(metrics))
                now = time.perf_counter()
                m = metrics_fn(pstep, m, batch, max(now - t_prev, 1e-9))
                t_prev = now
                guard.update(pstep, m)
                logger.write(pstep, m)
                self.last = {"step": pstep, **m}
                return not guard.diverged

            stop_signals = StopSignals().__enter__()
            while step < total:
                batch = next(batches)
                state, metrics = task.step(state, batch, step + 1)
                step += 1
                ok = flush()
                pending = (step, metrics, batch)
                if not ok:
                    break  # this step is logged below
                due = [h for h in hooks if h.due(step)]
                if due and not flush():
                    break
                for h in due:
                    out = h.fn(step, state)
                    if out:
                        logger.write(step, out, line=h.line(step, out) if h.line else None)
                        self.last.update(out)
                stop = stop_signals.requested()
                cadence = bool(s.checkpoint_every) and step % s.checkpoint_every == 0
                if ckpt and (cadence or step == total or step in save_at or stop):
                    if not flush():
                        break
                    if guard.run or not params_finite(state):
                        logger.text(f"step {step} not saved: its loss, gradient or parameters are not finite")
                    else:
                        ckpt.save(step, state, data_iter,
                                  meta={"step": step, "config": s.config_json, "nonfinite_total": guard.total,
                                        "time": time.time(), **task.meta()})
                if stop:
                    self.stopped_by = stop
                    logger.text(f"stopped by {signal.Signals(stop).name} at step {step}"
                                + ("; checkpoint saved, run the same command to resume" if ckpt else ""))
                    break
                if s.step_sleep:
                    time.sleep(s.step_sleep)
            flush()
        finally:
            if stop_signals is not None:
                stop_signals.__exit__(None, None, None)
            try:
                if ckpt:
                    ckpt.close()
            finally:
                if logger is not None:
                    task.close(self.last, logger)
                    logger.close()
        self.state = state
        if guard.diverged:
            raise DivergedError(guard.message(ckpt.latest_step() if ckpt else None))
        return self.last
