"""Strict checkpoint loading: every mismatch is named; missing files give clear errors."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from infinity_jax.state_dict import CheckpointMismatchError
from infinity_jax.text import convert, t5

Q0 = "encoder.block.0.layer.0.SelfAttention.q.weight"
WO1 = "encoder.block.1.layer.1.DenseReluDense.wo.weight"


@pytest.fixture()
def edit(tmp_path, hf_folder):
    """Copy hf_folder and rewrite its tensors with ``fn(state)``."""
    def run(fn):
        folder = tmp_path / "edited"
        shutil.copytree(hf_folder, folder)
        state = dict(load_file(folder / "model.safetensors"))
        fn(state)
        save_file(state, folder / "model.safetensors")
        return folder
    return run


def test_missing_key_named(edit):
    folder = edit(lambda s: s.pop(Q0))
    with pytest.raises(CheckpointMismatchError, match="missing keys") as e:
        t5.load(folder)
    assert e.value.missing == [Q0] and Q0 in str(e.value)
    assert not e.value.unexpected and not e.value.mismatched


def test_unexpected_key_named(edit):
    folder = edit(lambda s: s.update({"encoder.block.0.layer.0.SelfAttention.q.bias": np.zeros(64, np.float32)}))
    with pytest.raises(CheckpointMismatchError, match="unexpected keys") as e:
        t5.load(folder)
    assert e.value.unexpected == ["encoder.block.0.layer.0.SelfAttention.q.bias"]
    assert "SelfAttention.q.bias" in str(e.value)


def test_wrong_shape_named(edit):
    folder = edit(lambda s: s.update({WO1: np.zeros((64, 64), np.float32)}))
    with pytest.raises(CheckpointMismatchError, match="wrong shapes") as e:
        t5.load(folder)
    assert e.value.mismatched == [(WO1, (64, 64), (64, 128))]
    assert f"{WO1}: checkpoint (64, 64) vs model (64, 128)" in str(e.value)


def test_config_disagreeing_with_weights(tmp_path, hf_folder):
    folder = tmp_path / "more_layers"
    shutil.copytree(hf_folder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_layers": 3}))
    with pytest.raises(CheckpointMismatchError) as e:
        t5.load(folder)
    assert "encoder.block.2.layer.0.SelfAttention.q.weight" in e.value.missing


def test_decoder_and_lm_head_ignored_embed_alias(edit):
    def fn(s):
        s["encoder.embed_tokens.weight"] = s.pop("shared.weight")
        s["decoder.block.0.layer.0.SelfAttention.q.weight"] = s[Q0]
        s["lm_head.weight"] = s["encoder.embed_tokens.weight"]
    t5.load(edit(fn))  # loads


def test_missing_folder_config_and_weights(tmp_path, hf_folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        t5.load(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        t5.load(empty)
    (empty / "config.json").write_text((hf_folder / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no T5 weights.*model.safetensors"):
        t5.load(empty)
    (empty / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {Q0: "model-1.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="shards that are missing"):
        t5.load(empty)
    (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type"):
        t5.load(empty)


def test_expected_shapes_cover_every_param(hf_folder):
    cfg = convert.read_config(hf_folder)
    assert set(convert.expected_shapes(cfg)) == set(convert.read_weights(hf_folder))
