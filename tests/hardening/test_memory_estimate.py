"""A config too big for the machine stops before allocating, with the figure and the fix."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "training"))
from train_helpers import load_config  # noqa: E402

from infinity_jax.sharding import make_mesh  # noqa: E402
from infinity_jax.training.trainer import ConfigError, Trainer  # noqa: E402


def test_2b_on_a_small_cpu_box_is_refused_with_the_figure():
    tr = Trainer(load_config("size=2b,runlocal=True", **{"model.text_channels": 2048, "text.max_len": 16}), None,
                 mesh=make_mesh({"fsdp": 8}))
    need = tr.memory_estimate()["bytes"]
    assert 25 * 2 ** 30 < need < 80 * 2 ** 30  # ~2.1B parameters x (weights, grads, 2 Adam moments)
    with pytest.raises(ConfigError, match=r"needs at least \d+\.\d GiB .* 24\.0 GiB .*size=tiny.*layer12"):
        tr.check_memory(available_bytes=24 * 2 ** 30)
    tiny = Trainer(load_config(), None, mesh=make_mesh({"fsdp": 8}))
    tiny.check_memory(available_bytes=1 * 2 ** 30)  # fits: no error
    assert tiny.memory_estimate()["bytes"] < 2 ** 30
