"""The Validator from its parts (a model definition, a held-out set, a mesh, a frozen encoder): the
same per-image metrics as :func:`validation_batch` on the whole set, whatever the batching."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from infinity_jax.eval import validation as val
from infinity_jax.sharding import make_mesh
from infinity_jax.tokenizer.pixels import from_uint8
from infinity_jax.training import state as st
from infinity_jax.transformer.config import InfinityConfig
from infinity_jax.transformer.model import Infinity

SCALES = ((1, 1, 1), (1, 2, 2), (1, 3, 3))
N, T, CT, D = 6, 5, 32, 8


def fake_features(images) -> jax.Array:
    """A stand-in frozen tokenizer: uint8 (B, 3, 3, 3) -> features (B, 3, 3, 8)."""
    x = from_uint8(images)
    return jnp.concatenate([x, -x, x[..., :2] * 0.5], axis=-1)


@pytest.fixture(scope="module")
def parts():
    cfg = InfinityConfig(depth=1, embed_dim=64, num_heads=2, codebook_dim=D, text_channels=CT, text_maxlen=8)
    mesh = make_mesh({"data": 2}, devices=jax.devices()[:2])
    md = st.split_model(lambda: Infinity(cfg, rngs=nnx.Rngs(0)), mesh)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda v: rng.normal(0, 0.02, v.shape).astype(np.float32), st.state_to_tree(md.abstract))
    images = rng.integers(0, 256, (N, 3, 3, 3), dtype=np.uint8)
    text = rng.normal(size=(N, T, CT)).astype(np.float32)
    mask = np.arange(T)[None] < rng.integers(1, T + 1, (N, 1))
    heldout = val.HeldOutSet(images, text, mask, np.array([f"c{i}" for i in range(N)]), np.arange(N), SCALES, (3, 3))
    return md, mesh, params, heldout


def test_validator_matches_validation_batch_on_the_whole_set(parts):
    md, mesh, params, heldout = parts
    calls = []

    def encode(batches):
        out = [fake_features(b) for b in batches]
        calls.append([b.shape for b in out])
        return out

    vcfg = ml_collections.ConfigDict(dict(batch_size=3, seed=5))  # rounded down to the 2 data shards
    v = val.Validator(md, heldout, mesh, vcfg, encode=encode)
    assert (v.batch_size, v.num_batches) == (2, 3) and v.strength == val.VAL_STRENGTH
    got = v(params)
    again = v(params)
    assert len(calls) == 1 and calls[0] == [(2, 3, 3, D)] * 3  # the tokenizer runs once
    ref = jax.device_get(val.validation_batch(md.merge(jax.tree.map(jnp.asarray, params)), jnp.asarray(heldout.text),
                                              jnp.asarray(heldout.text_mask), fake_features(heldout.images), SCALES,
                                              val.sample_keys(5, jnp.arange(N))))
    for k in val.METRICS + ("bsc_strength",):
        assert got[k].shape[0] == N
        np.testing.assert_allclose(got[k], ref[k], rtol=2e-5, atol=1e-6, err_msg=k)
        np.testing.assert_array_equal(got[k], again[k])
    # one batch of all six: the same per-image numbers (flips are per image, not per batch)
    whole = val.Validator(md, heldout, mesh, ml_collections.ConfigDict(dict(batch_size=6, seed=5)),
                          encode=lambda bs: [fake_features(b) for b in bs])(params)
    np.testing.assert_allclose(whole["loss"], got["loss"], rtol=2e-5, atol=1e-6)


def test_validator_settings_and_errors(parts):
    md, mesh, params, heldout = parts
    clean = val.Validator(md, heldout, mesh, ml_collections.ConfigDict(dict(strength=0.0, batch_size=2)),
                          encode=lambda bs: [fake_features(b) for b in bs])
    out = clean(params)
    assert np.all(out["bsc_strength"] == 0)
    small = val.HeldOutSet(heldout.images[:1], heldout.text[:1], heldout.text_mask[:1], heldout.captions[:1],
                           heldout.index[:1], SCALES, (3, 3))
    with pytest.raises(ValueError, match="cannot fill a batch of 2"):
        val.Validator(md, small, mesh, ml_collections.ConfigDict(), encode=lambda bs: [])
