"""Fault injection: ``kill -9`` at random points while a checkpoint is being written, 5 times in a
row. Every rerun of the same command resumes from the newest complete checkpoint, and the final
parameters equal those of an uninterrupted run bit for bit (``metrics.jsonl`` has each step once)."""
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "training"))
from train_helpers import ROOT, run_train, subprocess_env, train_command  # noqa: E402

TOTAL = 10


def _complete_steps(ckdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in ckdir.iterdir() if p.name.isdigit()) if ckdir.is_dir() else []


def _tmp_names(ckdir: pathlib.Path) -> set[str]:
    return {p.name for p in os.scandir(ckdir) if "tmp" in p.name} if ckdir.is_dir() else set()


def _saving(ckdir: pathlib.Path, stale: set[str]) -> bool:
    """Whether a step is being written now (an Orbax temporary folder that a killed run did not leave)."""
    return bool(_tmp_names(ckdir) - stale)


def _params(ckdir: pathlib.Path, step: int):
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(str(ckdir / str(step) / "state"))["params"]


@pytest.mark.slow
def test_kill_9_during_saves_resumes_to_identical_params(tmp_path):
    over = {"total_steps": TOTAL, "checkpoint.every": 1, "checkpoint.keep": 2, "compilation_cache": str(tmp_path / "c")}
    run_train(tmp_path / "ref", over)
    ref = _params(tmp_path / "ref" / "checkpoints", TOTAL)

    run = tmp_path / "run"
    ck = run / "checkpoints"
    cmd = train_command(run, over)
    rng = random.Random(0)
    expect_resume, mid_save, resumes = None, 0, []
    for kill in range(5):
        log = open(tmp_path / f"out{kill}.txt", "w")
        p = subprocess.Popen(cmd, env=subprocess_env(1), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        stale = _tmp_names(ck)
        deadline = time.time() + 240
        while p.poll() is None and time.time() < deadline and not _saving(ck, stale):
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.02))  # a random point inside (or just after) the write
        mid_save += _saving(ck, stale)
        p.send_signal(signal.SIGKILL)
        p.wait()
        log.close()
        assert p.returncode == -signal.SIGKILL, (tmp_path / f"out{kill}.txt").read_text()[-3000:]
        out = (tmp_path / f"out{kill}.txt").read_text()
        if expect_resume is None:
            assert "started from scratch" in out
        else:
            assert f"resumed from {ck}/{expect_resume} " in out, out[-3000:]
        steps = _complete_steps(ck)
        assert not steps or max(steps) < TOTAL, steps
        expect_resume = max(steps) if steps else None
        resumes.append(expect_resume)
    done = subprocess.run(cmd, env=subprocess_env(1), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {ck}/{expect_resume} " in done.stdout
    final = _params(ck, TOTAL)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(final), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, TOTAL + 1))
    assert mid_save >= 3, f"only {mid_save} of 5 kills landed while a save was being written"
    assert resumes[-1] is not None and resumes[-1] > (resumes[0] or 0)  # the runs made progress between kills
    print(f"5 kills, {mid_save} during a save; newest complete step after each: {resumes}; "
          f"final parameters identical")
