"""Recipe switches of the official trainer: ``noise_apply_requant`` and ``always_training_scales``."""
import jax
import jax.numpy as jnp
import numpy as np
from train_helpers import load_config

from infinity_jax.sharding import make_mesh
from infinity_jax.training.trainer import Trainer
from infinity_jax.transformer.self_correction import flip_requant


def _trainer(**overrides):
    return Trainer(load_config(**overrides), None, mesh=make_mesh({"data": 1}, devices=jax.devices()[:1]))


def _features(tr, B=4):
    s = tr.vcfg.stride
    H, W = tr.buckets[0].pixel
    return jnp.asarray(np.random.default_rng(0).normal(size=(B, H // s, W // s, tr.vcfg.codebook_dim)), jnp.float32)


def test_official_defaults():
    c = load_config("size=2b")
    assert c.bsc.requant is True and c.loss.always_training_scales == 100
    assert (c.bsc.strength, c.bsc.apply_layers) == (0.3, 13)
    assert c.text.short_caption_prob == 0.5 and c.text.dynamic_length_prompt is True


def test_requant_switch_feeds_flipped_or_clean_codes_forward():
    feats = None
    for requant in (True, False):
        tr = _trainer(bsc__requant=requant, bsc__strength=0.5)
        feats = _features(tr) if feats is None else feats
        scales = tr.buckets[0].scales
        x, labels, train_scales, strengths = tr.teacher_forcing(feats, scales, jax.random.PRNGKey(0))
        clean = flip_requant(feats, scales)
        assert train_scales == tuple(scales) and strengths.shape == (4, len(scales))
        same = np.array_equal(np.asarray(x), np.asarray(clean.x_BLC_wo_prefix))
        assert same != requant, requant  # requant=0: the flips are drawn but never fed forward
        assert np.array_equal(np.asarray(labels), np.asarray(clean.labels)) != requant


def test_always_training_scales_cuts_inputs_labels_and_the_loss():
    tr = _trainer(loss__always_training_scales=2)
    scales = tr.buckets[0].scales
    assert len(scales) == 3 and tr.training_scale_count(scales) == 2
    feats = _features(tr)
    x, labels, train_scales, _ = tr.teacher_forcing(feats, scales, jax.random.PRNGKey(0))
    full = _trainer().teacher_forcing(feats, scales, jax.random.PRNGKey(0))
    L2 = 1 + 4  # scales (1,1) and (2,2)
    assert train_scales == tuple(scales[:2]) and x.shape[1] == L2 - 1 and labels.shape[1] == L2
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(full[1][:, :L2]))
    np.testing.assert_array_equal(np.asarray(x), np.asarray(full[0][:, : L2 - 1]))
    # the compiled step trains on those two scales only
    state = tr.init_state()
    B, (H, W) = tr.global_batch, tr.buckets[0].pixel
    batch = {"text": jnp.zeros((B, tr.text_len, tr.mcfg.text_channels)), "text_mask": jnp.ones((B, tr.text_len), bool),
             "image": jnp.zeros((B, H, W, 3), jnp.uint8)}
    _, metrics = tr.compiled_step(0)(state, tr.load_tokenizer(), batch)
    assert metrics["per_scale_loss"].shape == (2,) and np.isfinite(float(metrics["loss"]))
