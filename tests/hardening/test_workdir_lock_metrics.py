"""One run per workdir: a second one is refused with the holder named; a resumed run drops the
metric records past its checkpoint (no duplicate steps in ``metrics.jsonl``)."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "training"))
from train_helpers import ROOT, subprocess_env, train_command  # noqa: E402

from infinity_jax.training.metrics import MetricsLogger  # noqa: E402
from infinity_jax.training.workdir_lock import WorkdirLock, WorkdirLockedError  # noqa: E402


def test_lock_names_its_holder_and_is_released(tmp_path):
    first = WorkdirLock(tmp_path).acquire()
    with pytest.raises(WorkdirLockedError, match=rf"pid {os.getpid()} on {socket.gethostname()}"):
        WorkdirLock(tmp_path).acquire()
    first.release()
    WorkdirLock(tmp_path).acquire().release()


def test_resumed_metrics_have_no_duplicate_steps(tmp_path):
    log = MetricsLogger(str(tmp_path), total_steps=10, tensorboard=False, progress=False)
    for s in range(1, 7):
        log.write(s, {"loss": float(s)})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # a record cut by kill -9
    log = MetricsLogger(str(tmp_path), total_steps=10, start_step=4, tensorboard=False, progress=False)
    for s in range(5, 8):
        log.write(s, {"loss": 10.0 + s})
    log.close()
    records = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 8))
    assert [r["loss"] for r in records] == [1, 2, 3, 4, 15, 16, 17]


def test_second_run_on_a_workdir_is_refused(tmp_path):
    cmd = train_command(tmp_path / "w", {"total_steps": 50, "debug.step_sleep": 0.5, "checkpoint.every": 100})
    first = subprocess.Popen(cmd, env=subprocess_env(1), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "w" / "metrics.jsonl").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        second = subprocess.run(cmd, env=subprocess_env(1), cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and f"pid {first.pid}" in last, last
    finally:
        first.kill()
        first.wait()
