"""A diverging run (learning rate 1e30) does not destroy its good checkpoints: non-finite steps are
skipped and counted, the run stops with one clear line after ``optim.max_nonfinite_steps`` in a row,
no non-finite parameters are saved and the newest finite checkpoint survives the rotation."""
import json
import math
import pathlib
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "training"))
from train_helpers import run_train  # noqa: E402


def test_diverged_run_stops_and_keeps_the_finite_checkpoint(tmp_path):
    over = {"optim.lr": 1e30, "total_steps": 8, "checkpoint.every": 1, "checkpoint.keep": 2,
            "checkpoint.async_save": False, "optim.max_nonfinite_steps": 2}
    p = run_train(tmp_path, over, check=False)
    assert p.returncode == 3, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert err and "diverged" in err[-1] and "2 steps in a row" in err[-1], p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    m = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(m[0]["loss"]) and m[0]["nonfinite_total"] == 0
    bad = [r for r in m if not math.isfinite(r["loss"])]
    assert len(bad) == 2 and bad[-1]["nonfinite_total"] == 2
    steps = sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit())
    assert steps and max(steps) == m[0]["step"], steps  # only finite steps were saved, the good one kept
    for s in steps:
        tree = ocp.StandardCheckpointer().restore(str(tmp_path / "checkpoints" / str(s) / "state"))
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree["params"])), s
