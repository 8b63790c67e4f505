"""Validation as the official evaluation: BSC at strength 0.2, per-image and per-scale metrics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infinity_jax.eval import validation as val
from infinity_jax.transformer.config import InfinityConfig
from infinity_jax.transformer.loss import infinity_loss
from infinity_jax.transformer.model import Infinity
from infinity_jax.transformer.self_correction import flip_requant

SCALES = [(1, 1, 1), (1, 2, 2), (1, 3, 3)]


def test_per_sample_metrics_average_to_the_training_loss():
    rng = np.random.default_rng(0)
    B, L, d = 5, 14, 8
    logits = jnp.asarray(rng.normal(size=(B, L, 2 * d)), jnp.float32)
    bits = jnp.asarray(rng.integers(0, 2, size=(B, L, d)), jnp.int32)
    per = val.per_sample_metrics(logits, bits, SCALES)
    ref = infinity_loss(logits, bits, SCALES)
    assert per["loss"].shape == (B,) and per["per_scale_loss"].shape == (B, 3)
    np.testing.assert_allclose(per["loss"].mean(), ref.loss_mean_scale_reweighted, rtol=1e-6)
    np.testing.assert_allclose(per["loss_uniform"].mean(), ref.loss_mean_uniform, rtol=1e-6)
    np.testing.assert_allclose(per["bit_accuracy"].mean(), ref.bit_accuracy, rtol=1e-6)
    np.testing.assert_allclose(per["token_accuracy"].mean(), ref.token_accuracy, rtol=1e-6)
    np.testing.assert_allclose(per["per_scale_loss"].mean(0), ref.per_scale_loss, rtol=1e-5)
    np.testing.assert_allclose(per["per_scale_bit_accuracy"].mean(0), ref.per_scale_bit_accuracy, rtol=1e-5)
    s = val.summarize(jax.device_get(per))
    assert s["n_images"] == B and len(s["per_scale_loss"]) == 3
    assert s["loss_se"] == pytest.approx(np.std(np.asarray(per["loss"]), ddof=1) / np.sqrt(B), rel=1e-5)


@pytest.fixture(scope="module")
def tiny():
    cfg = InfinityConfig(depth=1, embed_dim=64, num_heads=2, codebook_dim=8, text_channels=32, text_maxlen=8,
                         cond_drop_rate=0.5, drop_path_rate=0.5)
    # random weights filled on the host (building the model eagerly compiles every initialiser: slow on CPU)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Infinity(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(1)
    model = nnx.merge(graphdef, jax.tree.map(lambda v: jnp.asarray(rng.normal(0, 0.02, v.shape), v.dtype), state))
    B = 4
    text = jnp.asarray(rng.normal(size=(B, 6, 32)), jnp.float32)
    mask = jnp.asarray(np.arange(6)[None] < np.array([[3], [6], [4], [5]]))
    feats = jnp.asarray(rng.normal(size=(B, 3, 3, 8)), jnp.float32)
    return model, text, mask, feats


def test_validation_is_deterministic_per_image_and_batch_size_independent(tiny):
    model, text, mask, feats = tiny
    fn = jax.jit(lambda t, m, f, k: val.validation_batch(model, t, m, f, SCALES, k))
    keys = val.sample_keys(1234, jnp.arange(4))
    full = jax.device_get(fn(text, mask, feats, keys))
    again = jax.device_get(fn(text, mask, feats, keys))
    # the same images in another batch order (other neighbours): the same per-image numbers
    perm = np.array([2, 0, 3, 1])
    shuffled = jax.device_get(fn(text[perm], mask[perm], feats[perm], keys[perm]))
    for k in val.METRICS + ("bsc_strength",):
        np.testing.assert_array_equal(full[k], again[k])
        np.testing.assert_allclose(shuffled[k], full[k][perm], rtol=1e-5, atol=1e-6)
    # (eval mode: caption dropout and drop-path, both 0.5 here, are off: ``again`` above is identical)
    # a different seed draws different flips
    other = jax.device_get(fn(text, mask, feats, val.sample_keys(99, jnp.arange(4))))
    assert not np.array_equal(other["bsc_strength"], full["bsc_strength"])
    assert np.isfinite(full["loss"]).all() and full["per_scale_loss"].shape == (4, 3)
    # a random model: about log 2 per bit
    assert np.all(np.abs(full["loss_uniform"] - np.log(2)) < 0.2)


def test_bsc_strength_draws_and_labels_follow_the_official_recipe():
    """p_k ~ U{0, .01, ..., .2} per image and scale (all 20 layers); flips at rate p_k; labels = bits of the
    residual after the corrupted earlier scales (so the first scale's labels are the clean bits)."""
    rng = np.random.default_rng(2)
    N, d = 32, 16
    scales = [(1, 1, 1), (1, 2, 2), (1, 4, 4)]
    feats = jnp.asarray(rng.normal(size=(N, 4, 4, d)), jnp.float32)
    keys = val.sample_keys(7, jnp.arange(N))
    bsc = jax.jit(lambda f, k, s, fixed: val.bsc_inputs(f, scales, k, strength=s, apply_layers=20, fixed=fixed),
                  static_argnums=(2, 3))
    x, labels, strengths = bsc(feats, keys, 0.2, False)
    s = np.asarray(strengths)
    assert s.shape == (N, 3)
    np.testing.assert_allclose(s * 100, np.round(s * 100), atol=1e-4)
    assert s.min() >= 0 and s.max() <= 0.2 + 1e-6 and 0.07 < s.mean() < 0.13
    assert len(np.unique(np.round(s * 100))) > 10
    clean = jax.jit(lambda f: flip_requant(f, scales, None))(feats)
    assert labels.shape == clean.labels.shape and x.shape == clean.x_BLC_wo_prefix.shape
    np.testing.assert_array_equal(np.asarray(labels[:, :1]), np.asarray(clean.labels[:, :1]))
    assert not np.array_equal(np.asarray(labels), np.asarray(clean.labels))
    # image 0 alone through the official-style BSC with its key: the same labels, flips at the drawn rate
    one = jax.jit(lambda f, k: flip_requant(f, scales, k, strength=0.2, apply_layers=20))(feats[:1], keys[0])
    np.testing.assert_array_equal(np.asarray(one.labels), np.asarray(labels[:1]))
    np.testing.assert_allclose(np.asarray(one.strengths)[0], s[0])
    used, ref = np.asarray(one.used_bits[-1]), np.asarray(one.clean_bits[-1])
    assert abs(np.mean(used != ref) - s[0, -1]) < 4 * np.sqrt(0.25 / used.size) + 1e-6
    # strength 0 is clean teacher forcing
    x0, l0, s0 = val.bsc_inputs(feats, scales, keys, strength=0.0)
    np.testing.assert_array_equal(np.asarray(l0), np.asarray(clean.labels))
    assert float(jnp.abs(x - x0).max()) > 0 and not np.asarray(s0).any()
    # fixed strength: every scale flips at exactly 0.2
    _, _, sf_ = bsc(feats, keys, 0.2, True)
    np.testing.assert_allclose(np.asarray(sf_), 0.2)
