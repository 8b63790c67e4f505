"""TextEncoder: tokenizer + model, bucketed padding, zeroed padding, HF end to end."""
import numpy as np
import pytest

from infinity_jax.text import TextEncoder
from infinity_jax.tools.train_sentencepiece import build_tiny_t5

PROMPTS = ["a cat", "", "a photo of the old woman wearing a hat in the snow, detailed realistic", "東京 夜景 🐱"]


@pytest.fixture(scope="module")
def encoder(hf_folder):
    return TextEncoder.load(hf_folder, bucket=16)


def test_encode_shapes_and_padding(encoder):
    feats, mask, lens = encoder.encode(PROMPTS)
    b, length, c = feats.shape
    assert (b, c) == (len(PROMPTS), encoder.dim) and length % 16 == 0
    assert feats.dtype == np.float32 and mask.dtype == bool and lens.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(mask).sum(1), np.asarray(lens))
    assert int(lens[1]) == 1  # empty prompt: EOS only
    assert np.all(np.asarray(feats)[~np.asarray(mask)] == 0)
    assert np.all(np.abs(np.asarray(feats)[np.asarray(mask)]).sum(-1) > 0)


def test_features_match_transformers(encoder, hf_model, hf_folder):
    import torch
    from transformers import T5Tokenizer as HFT5Tokenizer

    feats, mask, lens = encoder.encode(PROMPTS)
    hf_tok = HFT5Tokenizer.from_pretrained(hf_folder)
    batch = hf_tok(PROMPTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        ref = hf_model(**batch).last_hidden_state.numpy()
    np.testing.assert_array_equal(np.asarray(lens), batch["attention_mask"].sum(1).numpy())
    for i, n in enumerate(np.asarray(lens)):
        np.testing.assert_allclose(np.asarray(feats)[i, :n], ref[i, :n], atol=1e-5, rtol=0)


def test_batch_composition_does_not_change_features(encoder):
    """A prompt alone and inside a longer, differently bucketed batch gives the same features."""
    alone, _, n = encoder.encode([PROMPTS[0]])
    mixed, _, _ = encoder.encode(PROMPTS)
    n = int(n[0])
    np.testing.assert_allclose(np.asarray(alone)[0, :n], np.asarray(mixed)[0, :n], atol=1e-5)


def test_buckets_limit_compiles(hf_folder):
    enc = TextEncoder.load(hf_folder, bucket=(8, 32, 64), batch_multiple=4)
    for prompts in (["a"], ["a cat", "a dog on the table"], ["a photo"] * 3):
        feats, mask, _ = enc.encode(prompts)
        assert feats.shape[0] == len(prompts) and feats.shape[1] == 8
    assert enc.compiled_shapes == {(4, 8)}
    assert enc.padded_length(9) == 32 and enc.padded_length(65) == 65


def test_tiny_t5_without_torch(tmp_path, corpus):
    folder = build_tiny_t5(tmp_path / "tiny", corpus[:500], vocab_size=200, seed=3)
    assert {"config.json", "model.safetensors", "spiece.model"} <= {p.name for p in folder.iterdir()}
    enc = TextEncoder.load(folder)
    assert enc.model.cfg.vocab_size == enc.tokenizer.vocab_size
    feats, _, _ = enc.encode(["a cat on the beach"])
    assert feats.shape[-1] == 64 and np.isfinite(np.asarray(feats)).all()


def test_sharded_params_on_a_mesh_give_same_features(hf_folder):
    """Logical axis names map onto a (data, fsdp, tensor) mesh; results do not change."""
    import jax
    from flax import nnx

    from infinity_jax.sharding import make_mesh, state_shardings

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (simulated) devices")
    enc = TextEncoder.load(hf_folder, bucket=16)
    ref, _, _ = enc.encode(PROMPTS)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    state = nnx.state(enc.model)
    sharded = jax.device_put(state, state_shardings(state, mesh))
    assert sharded["blocks"][0]["attn"]["q"].get_value().sharding.spec == jax.sharding.PartitionSpec(
        "fsdp", "tensor", None)
    nnx.update(enc.model, sharded)
    enc2 = TextEncoder(enc.tokenizer, enc.model, bucket=16, batch_multiple=2)
    with jax.set_mesh(mesh):
        out, _, _ = enc2.encode(PROMPTS)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


def test_absolute_positions(tmp_path, shapes_spiece):
    """A tiny encoder with learned absolute positions: saved and loaded, added to the embeddings, length-limited."""
    import dataclasses

    import jax.numpy as jnp

    from infinity_jax.text.config import T5Config
    from infinity_jax.text.convert import expected_shapes, to_state_dict
    from infinity_jax.text.t5 import from_state_dict, load
    from infinity_jax.tools.train_sentencepiece import TINY_CONFIG

    cfg = dataclasses.replace(TINY_CONFIG, absolute_positions=8)
    folder = build_tiny_t5(tmp_path / "t5", spiece_model=shapes_spiece, config=cfg, seed=0)
    model = load(folder)
    assert expected_shapes(model.cfg)["encoder.embed_positions.weight"] == (8, cfg.d_model)
    assert "encoder.embed_positions.weight" not in expected_shapes(TINY_CONFIG)
    enc = TextEncoder.load(folder)
    assert enc.model.cfg.absolute_positions == 8 and enc.max_length == 8
    f, m, _ = enc.encode(["a circle and a star", "a star"])
    assert f.shape[1] == 8  # padded to the bucket (32), capped at the positions
    # the same weights without the position table: equal only once the table is zeroed
    state = to_state_dict(model)
    table = state.pop("encoder.embed_positions.weight")
    plain = from_state_dict(state, dataclasses.replace(model.cfg, absolute_positions=0))
    ids = jnp.asarray(enc.tokenize(["a red circle and a blue star"]).ids)
    assert not np.allclose(np.asarray(model(ids)), np.asarray(plain(ids)), atol=1e-3)
    zeroed = from_state_dict({**state, "encoder.embed_positions.weight": 0 * table}, model.cfg)
    np.testing.assert_allclose(np.asarray(zeroed(ids)), np.asarray(plain(ids)), atol=1e-6)
    long = " and ".join(["a red circle"] * 6)
    assert enc.tokenize(long).ids.shape[1] == 8  # truncated to what the encoder can place
    with pytest.raises(ValueError, match="position embeddings for 8"):
        model(jnp.zeros((1, 9), jnp.int32))
    with pytest.raises(ValueError, match="absolute_positions"):
        T5Config(absolute_positions=-1)
