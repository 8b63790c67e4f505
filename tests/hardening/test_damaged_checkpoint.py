"""A damaged newest checkpoint is moved aside (renamed, never deleted) when the run falls back past
it, so the resumed run can save that step again instead of dying with ``StepAlreadyExistsError`` on
every rerun; when no checkpoint at all can be read, one line says so."""
import pathlib
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "training"))
from train_helpers import load_config  # noqa: E402

from infinity_jax.sharding import make_mesh  # noqa: E402
from infinity_jax.training.checkpoint import Checkpointer, NoGoodCheckpointError  # noqa: E402
from infinity_jax.training.trainer import Trainer  # noqa: E402


def _state(tr, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jax.device_put(rng.standard_normal(a.shape).astype(a.dtype), a.sharding),
                        tr.abstract_state())


@pytest.fixture(scope="module")
def trainer():
    return Trainer(load_config(batch_size=8), None, mesh=make_mesh({"fsdp": 8}))


def _truncate_a_state_file(step_dir: pathlib.Path):
    files = sorted((f for f in (step_dir / "state").rglob("*") if f.is_file() and f.stat().st_size > 64),
                   key=lambda f: -f.stat().st_size)
    files[0].write_bytes(files[0].read_bytes()[:16])


@pytest.mark.parametrize("damage", ["truncate", "no_metadata"])
def test_damaged_latest_step_is_moved_aside_and_saved_again(tmp_path, trainer, damage):
    s1, s2 = _state(trainer, 1), _state(trainer, 2)
    ck = Checkpointer(tmp_path / "ck", keep=3, async_save=False)
    ck.save(1, s1)
    ck.save(2, s2)
    ck.close()
    if damage == "truncate":
        _truncate_a_state_file(tmp_path / "ck" / "2")
    else:
        (tmp_path / "ck" / "2" / "_CHECKPOINT_METADATA").unlink()
        for f in (tmp_path / "ck" / "2").rglob("_METADATA"):
            f.unlink()
    for attempt in range(2):  # a rerun (requeue) after the first resume behaves the same
        ck = Checkpointer(tmp_path / "ck", keep=3, async_save=False)
        step, restored, _ = ck.restore(trainer.abstract_state())
        assert step == (1 if attempt == 0 else 2)
        if step == 1:
            ck.save(2, s2)  # the resumed run reaches step 2 again
        ck.close()
    for x, y in zip(jax.tree.leaves(s2), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    aside = list((tmp_path / "ck.damaged").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("2-"), aside
    assert any(aside[0].rglob("*"))  # moved, not deleted


def test_every_checkpoint_damaged_is_one_clear_error(tmp_path, trainer):
    ck = Checkpointer(tmp_path / "ck", keep=3, async_save=False)
    ck.save(1, _state(trainer, 1))
    ck.close()
    _truncate_a_state_file(tmp_path / "ck" / "1")
    with pytest.raises(NoGoodCheckpointError, match=r"no checkpoint in .* could be restored.*step 1"):
        Checkpointer(tmp_path / "ck").restore(trainer.abstract_state())
    assert (tmp_path / "ck" / "1").is_dir()  # nothing is moved when there is nothing to fall back to
