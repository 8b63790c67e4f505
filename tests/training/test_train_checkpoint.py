"""Orbax checkpoints: restore onto a different mesh, fall back past a damaged step, fine-tune from a
converted official checkpoint or from another run's parameters (8 simulated devices, no compiling)."""
import shutil

import jax
import numpy as np
import pytest
from train_helpers import load_config

from infinity_jax.sharding import make_mesh
from infinity_jax.training.checkpoint import Checkpointer, restore_params
from infinity_jax.training.trainer import Trainer


def _random_state(tr: Trainer, seed: int = 0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jax.device_put(rng.standard_normal(a.shape).astype(a.dtype), a.sharding),
                        tr.abstract_state())


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_checkpoint_restores_onto_a_different_mesh(tmp_path):
    config = load_config(batch_size=8)
    a = Trainer(config, None, mesh=make_mesh({"fsdp": 8}))
    state = _random_state(a)
    ck = Checkpointer(tmp_path / "ck", keep=2)
    ck.save(3, state, meta={"note": "x"})
    ck.close()
    b = Trainer(config, None, mesh=make_mesh({"data": 2, "tensor": 4}))
    step, restored, meta = Checkpointer(tmp_path / "ck").restore(b.abstract_state())
    assert step == 3 and meta["note"] == "x"
    _assert_same(state, restored)
    for x, want in zip(jax.tree.leaves(restored), jax.tree.leaves(b.state_shardings)):
        assert x.sharding.is_equivalent_to(want, x.ndim)
    kernel = restored["params"]["blocks"]["ffn"]["fc1"]["kernel"]
    assert kernel.sharding.spec == want_spec(b, ("blocks", "ffn", "fc1", "kernel"))
    assert "tensor" in str(kernel.sharding.spec) and "fsdp" not in str(kernel.sharding.spec)


def want_spec(tr, path):
    s = tr.md.shardings
    for k in path:
        s = s[k]
    return s.spec


def test_train_checkpoint_falls_back_past_a_damaged_step(tmp_path):
    tr = Trainer(load_config(batch_size=8), None, mesh=make_mesh({"fsdp": 8}))
    s1, s2 = _random_state(tr, 1), _random_state(tr, 2)
    ck = Checkpointer(tmp_path / "ck", keep=3)
    ck.save(1, s1)
    ck.save(2, s2)
    ck.close()
    shutil.rmtree(tmp_path / "ck" / "2" / "state")  # damaged latest step
    step, restored, _ = Checkpointer(tmp_path / "ck").restore(tr.abstract_state())
    assert step == 1
    _assert_same(s1, restored)
    # another run's parameters only (fine-tuning / evaluation), onto yet another mesh
    other = Trainer(load_config(batch_size=8), None, mesh=make_mesh({"data": 8}))
    params = restore_params(tmp_path / "ck", other.md.abstract_params(), step=1)
    _assert_same(s1["params"], params)


def test_train_init_from_converted_official_checkpoint(official_tiny):
    """``init.official``: the official-tiny transformer weights, converted and placed sharded."""
    import json

    from infinity_jax.state_dict import load_state_dict
    from infinity_jax.transformer import convert

    man = json.loads((official_tiny / "manifest.json").read_text())["config"]["infinity"]
    path = str(official_tiny / "weights_infinity.npz")
    config = load_config(batch_size=8, **{"model.text_channels": man["text_channels"],
                                          "model.text_maxlen": man["text_maxlen"], "init.official": path})
    tr = Trainer(config, None, mesh=make_mesh({"fsdp": 4, "tensor": 2}))
    params = tr.init_params()
    assert params["blocks"]["sa"]["mat_qkv"]["kernel"].sharding.spec == want_spec(tr, ("blocks", "sa", "mat_qkv", "kernel"))
    exported = convert.export_official(tr.md.merge(jax.device_get(params)))
    official = load_state_dict(path)
    for k, v in official.items():
        if k.endswith("zero_k_bias"):
            continue
        np.testing.assert_array_equal(exported[k], np.asarray(v, np.float32), err_msg=k)


def test_train_init_official_reads_tensor_by_tensor_into_the_shardings(official_tiny, monkeypatch):
    """``init.official`` never holds the checkpoint whole: tensors are read lazily, one at a time, and
    each device's shard is cut from its tensor and placed straight into the parameter's sharding."""
    import json

    from infinity_jax import state_dict
    from infinity_jax.training import state as st
    from infinity_jax.transformer import convert

    man = json.loads((official_tiny / "manifest.json").read_text())["config"]["infinity"]
    config = load_config(batch_size=8, **{"model.text_channels": man["text_channels"],
                                          "model.text_maxlen": man["text_maxlen"],
                                          "init.official": str(official_tiny / "weights_infinity.npz")})
    tr = Trainer(config, None, mesh=make_mesh({"fsdp": 4, "tensor": 2}))

    def refuse(*a, **k):
        raise AssertionError("the whole checkpoint or a whole parameter went through host memory")

    monkeypatch.setattr(state_dict, "load_state_dict", refuse)
    monkeypatch.setattr(convert, "load_state_dict", refuse)
    monkeypatch.setattr(st, "place_params", refuse)
    reads = []
    opened = state_dict.open_state_dict

    def counting_open(path, **kw):
        lazy = opened(path, **kw)
        assert all(isinstance(t, state_dict.LazyTensor) for t in lazy.values())
        return {k: state_dict.LazyTensor(t.shape, lambda t=t, k=k: reads.append(k) or np.asarray(t))
                for k, t in lazy.items()}

    monkeypatch.setattr(state_dict, "open_state_dict", counting_open)
    placed = []
    make = jax.make_array_from_callback

    def recording(shape, sharding, cb, *a, **k):
        def wrapped(idx):
            out = cb(idx)
            placed.append((tuple(shape), out.shape))
            return out
        return make(shape, sharding, wrapped, *a, **k)

    monkeypatch.setattr(jax, "make_array_from_callback", recording)
    params = tr.init_params()
    assert reads  # every tensor came through a lazy read
    assert any(int(np.prod(got)) < int(np.prod(full)) for full, got in placed)  # shards, not whole tensors
    for a, s in zip(jax.tree.leaves(params), jax.tree.leaves(tr.md.shardings)):
        assert a.sharding == s


def test_train_init_errors_are_clear(tmp_path):
    from infinity_jax.training.trainer import ConfigError

    tr = Trainer(load_config(batch_size=8, **{"init.official": str(tmp_path / "missing.pth")}), None,
                 mesh=make_mesh({"fsdp": 8}))
    with pytest.raises(ConfigError, match="does not exist"):
        tr.init_params()
    with pytest.raises(ConfigError, match="not divisible"):
        Trainer(load_config(batch_size=6), None, mesh=make_mesh({"fsdp": 8}))
    typo = load_config()
    typo.model.depht = 3  # a key the model has not (overrides of existing keys only: set it directly)
    with pytest.raises(ConfigError, match="unknown config.model keys"):
        Trainer(typo, None, mesh=make_mesh({"fsdp": 8}))
