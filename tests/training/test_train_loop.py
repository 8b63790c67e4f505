"""The one training loop (``training/loop.py``) on a toy task: resume equals an uninterrupted run,
hooks and extra saves fire at their steps, a diverged run stops and saves no bad step, and the
workdir lock is released on success and on error."""
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infinity_jax.training.checkpoint import Checkpointer
from infinity_jax.training.loop import DivergedError, Hook, LoopSettings, Task, TrainLoop
from infinity_jax.training.workdir_lock import WorkdirLock


def _task(bad_from: int | None = None, fail_at: int | None = None) -> Task:
    """``w <- w - 0.1 (w - target(n))``; the loss is NaN from step ``bad_from``; step ``fail_at`` raises."""

    @jax.jit
    def update(state, target, bad):
        w = state["params"]["w"]
        loss = jnp.mean((w - target) ** 2) + jnp.where(bad, jnp.nan, 0.0)
        return {"step": state["step"] + 1, "params": {"w": w - 0.1 * (w - target)}}, {"loss": loss}

    def step(state, batch, n):
        if fail_at is not None and n == fail_at:
            raise RuntimeError("boom")
        target = jnp.asarray(np.random.default_rng(n).normal(size=4), jnp.float32)
        return update(state, target, jnp.bool_(bad_from is not None and n >= bad_from))

    def init():
        return {"step": jnp.zeros((), jnp.int32), "params": {"w": jnp.arange(4, dtype=jnp.float32)}}

    return Task(batches=lambda: itertools.repeat(None), init_state=init,
                abstract_state=lambda: jax.eval_shape(init), step=step)


def _settings(total, **kw):
    kw.setdefault("checkpoint_every", 2)
    kw.setdefault("keep", 10)
    return LoopSettings(total_steps=total, async_save=False, config_json={},
                        logger={"tensorboard": False, "progress": False, "print_every": 0}, **kw)


def _steps(workdir):
    return [json.loads(ln)["step"] for ln in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_resume_equals_uninterrupted_and_hooks_fire(tmp_path):
    ref = TrainLoop(str(tmp_path / "ref"), _settings(10))
    ref.run(_task())
    calls = []
    hook = Hook(lambda n, state: calls.append((n, float(state["params"]["w"][0]))) or {"eval/x": float(n)},
                every=4, at=(3,))
    first = TrainLoop(str(tmp_path / "run"), _settings(7))
    first.run(_task(), hooks=(hook,), save_at=(5,))
    assert [n for n, _ in calls] == [3, 4]
    saved = Checkpointer(tmp_path / "run" / "checkpoints", keep=10)
    assert saved.all_steps() == [2, 4, 5, 6, 7]  # every 2, save_at 5, the last step
    saved.close()
    second = TrainLoop(str(tmp_path / "run"), _settings(10))
    last = second.run(_task(), hooks=(hook,))
    assert second.start_step == 7 and last["step"] == 10 and [n for n, _ in calls] == [3, 4, 8]
    np.testing.assert_array_equal(np.asarray(second.state["params"]["w"]), np.asarray(ref.state["params"]["w"]))
    # one record per step plus the hook's records at steps 3, 4 and 8
    assert sorted(_steps(tmp_path / "run")) == sorted(list(range(1, 11)) + [3, 4, 8])
    WorkdirLock(tmp_path / "run").acquire().release()  # released


def test_diverged_run_stops_and_saves_no_bad_step(tmp_path):
    loop = TrainLoop(str(tmp_path), _settings(10, checkpoint_every=1, max_nonfinite_steps=2,
                                              diverged_advice="lower it"))
    with pytest.raises(DivergedError, match=r"2 steps in a row \(steps 4\.\.5\).*step 3\) is finite and kept; lower it"):
        loop.run(_task(bad_from=4))
    ck = Checkpointer(tmp_path / "checkpoints")
    assert ck.all_steps() == [1, 2, 3]
    ck.close()
    assert _steps(tmp_path) == [1, 2, 3, 4, 5]
    WorkdirLock(tmp_path).acquire().release()


def test_an_error_releases_the_lock_and_keeps_the_saved_steps(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        TrainLoop(str(tmp_path), _settings(10)).run(_task(fail_at=5))
    WorkdirLock(tmp_path).acquire().release()
    loop = TrainLoop(str(tmp_path), _settings(6))
    loop.run(_task())
    assert loop.start_step == 4 and loop.last["step"] == 6
