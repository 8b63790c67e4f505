"""A diverging run (learning rate 1e30) does not destroy its good checkpoints: non-finite steps are
skipped and counted, the run stops with one clear line after ``optim.max_nonfinite_steps`` in a row,
no non-finite parameters are saved and the newest finite checkpoint survives the rotation."""
import json
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "training"))
from train_helpers import ROOT, subprocess_env, train_command  # noqa: E402

BASE = {"optim.lr": 1e30, "total_steps": 8, "optim.max_nonfinite_steps": 2, "checkpoint.keep": 2}


def test_diverged_run_stops_and_keeps_the_finite_checkpoint(tmp_path):
    runs = {"every_step": {"checkpoint.every": 1, "checkpoint.async_save": False}, "no_save": {"checkpoint.every": 100}}
    procs = {name: subprocess.Popen(train_command(tmp_path / name, {**BASE, **over}), env=subprocess_env(1), cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, over in runs.items()}
    for name, p in procs.items():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 3, (name, p.returncode, out[-2000:], err[-3000:])
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert lines and "diverged" in lines[-1] and "steps in a row" in lines[-1], err[-2000:]
        assert "Traceback" not in err
        m = [json.loads(ln) for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in m] == list(range(1, len(m) + 1))  # each step logged once
        assert math.isfinite(m[0]["loss"]) and m[0]["nonfinite_total"] == 0
        bad = [r for r in m if not math.isfinite(r["loss"])]
        assert len(bad) >= 2 and bad[-1]["nonfinite_total"] == len(bad) and len(m) < 8
    ck = tmp_path / "every_step" / "checkpoints"
    steps = sorted(int(d.name) for d in ck.iterdir() if d.name.isdigit())
    assert steps == [1], steps  # only the finite step was saved, and it was kept
    tree = ocp.StandardCheckpointer().restore(str(ck / "1" / "state"))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree["params"]))
    assert not (tmp_path / "no_save" / "checkpoints").exists() or not any(
        d.name.isdigit() for d in (tmp_path / "no_save" / "checkpoints").iterdir())
