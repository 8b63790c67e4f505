"""Disk full or unwritable workdir: one clear line naming the step and the folder; the previous
checkpoint stays intact and restorable."""
import errno
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "training"))
from train_helpers import ROOT, load_config, subprocess_env, train_command  # noqa: E402

from infinity_jax.sharding import make_mesh  # noqa: E402
from infinity_jax.training.checkpoint import Checkpointer, CheckpointWriteError  # noqa: E402
from infinity_jax.training.trainer import Trainer  # noqa: E402


@pytest.mark.parametrize("async_save", [False, True])
def test_disk_full_while_saving_keeps_the_previous_step(tmp_path, monkeypatch, async_save):
    import orbax.checkpoint as ocp

    tr = Trainer(load_config(batch_size=8), None, mesh=make_mesh({"fsdp": 8}))
    rng = np.random.default_rng(0)
    s1 = jax.tree.map(lambda a: jax.device_put(rng.standard_normal(a.shape).astype(a.dtype), a.sharding),
                      tr.abstract_state())
    ck = Checkpointer(tmp_path / "ck", keep=3, async_save=async_save)
    ck.save(1, s1)
    ck.wait()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", full)
    with pytest.raises(CheckpointWriteError) as info:
        ck.save(2, s1)
        ck.close()
    msg = str(info.value)
    assert "no space left on device" in msg.lower() and "step 2" in msg and str(tmp_path / "ck") in msg
    assert "step 1" in msg and "\n" not in msg
    monkeypatch.undo()
    step, restored, _ = Checkpointer(tmp_path / "ck").restore(tr.abstract_state())
    assert step == 1
    for x, y in zip(jax.tree.leaves(s1), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_unwritable_workdir_is_one_line(tmp_path):
    p = subprocess.run(train_command("/sys/infinity_run", {}), env=subprocess_env(1), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "/sys/infinity_run" in last, last
