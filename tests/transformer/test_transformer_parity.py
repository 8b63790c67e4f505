"""Teacher-forced parity of the transformer with the official implementation (both fixtures).

With spatial patchify (official-patchify) the inputs are 56 channels (2x2 tokenizer tokens of
d = 14) and the head gives 112 logits per token.
"""
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import fixture, patchify_flag, schedule, transformer
from infinity_jax.transformer.convert import export_official
from infinity_jax.transformer.loss import infinity_loss
from infinity_jax.transformer.self_correction import flip_requant


@pytest.fixture(scope="module", params=[False, True], ids=["blocks", "scan"])
def run(request, official):
    folder = str(official)
    _, inputs, goldens = fixture(folder)
    g = goldens["golden_transformer"]
    model = transformer(folder, request.param)
    logits, inter = model(jnp.asarray(inputs["text_features"]), jnp.asarray(inputs["text_mask"]),
                          jnp.asarray(g["x_BLC_wo_prefix"]), schedule(folder), return_intermediates=True)
    return model, inputs, g, np.asarray(logits), {k: np.asarray(v) for k, v in inter.items()}


def test_logits(run):
    model, _, g, logits, _ = run
    assert logits.shape == g["logits_BLV"].shape and logits.shape[-1] == model.cfg.vocab
    np.testing.assert_allclose(logits, g["logits_BLV"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["cond_BD", "shared_ada_lin_out", "word_embed_out", "block00_out", "block01_out",
                                  "head_nm_out", "rope_cos_sin"])
def test_intermediates(run, name):
    _, _, g, _, inter = run
    np.testing.assert_allclose(inter[name], g[name], atol=1e-4, rtol=0)


def test_packed_text_intermediates(run):
    """Padded-with-mask text equals the official packed (varlen) form at the valid tokens."""
    _, inputs, g, _, inter = run
    mask = inputs["text_mask"].astype(bool)
    np.testing.assert_allclose(inter["text_norm_out"][mask], g["text_norm_out"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(inter["ca_kv"][mask], g["ca_kv_compact"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.concatenate([f[:n] for f, n in zip(inputs["text_features"], inputs["text_lens"])]),
                               inputs["kv_compact"], atol=0)


def test_losses(run, official):
    _, _, g, logits, _ = run
    out = infinity_loss(jnp.asarray(logits), jnp.asarray(g["gt_BL_bits"]), schedule(str(official)))
    np.testing.assert_allclose(np.asarray(out.loss_per_token), g["loss_per_token"], atol=1e-5, rtol=0)
    for k in ("loss_mean_uniform", "loss_mean_scale_reweighted", "bit_accuracy"):
        np.testing.assert_allclose(float(getattr(out, k)), float(g[k]), atol=1e-5, rtol=0)


def test_inputs_and_labels_from_features(official):
    """BSC with no flips turns the tokenizer's raw features into the official inputs and labels
    (with spatial patchify: the packed inputs and Bitwise Self-Correction's patchified labels)."""
    folder = str(official)
    _, _, goldens = fixture(folder)
    feat = jnp.asarray(goldens["golden_vae"]["raw_features"].transpose(0, 2, 3, 1))
    out = flip_requant(feat, schedule(folder), patchify=patchify_flag(folder))
    g = goldens["golden_transformer"]
    assert out.x_BLC_wo_prefix.shape == g["x_BLC_wo_prefix"].shape and out.labels.shape == g["gt_BL_bits"].shape
    np.testing.assert_allclose(np.asarray(out.x_BLC_wo_prefix), g["x_BLC_wo_prefix"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(np.asarray(out.labels), g["gt_BL_bits"])


def test_export_round_trip(run, official):
    model = run[0]
    w = dict(np.load(official / "weights_infinity.npz"))
    ex = export_official(model)
    assert set(ex) == set(w)
    for k in w:
        np.testing.assert_array_equal(ex[k], w[k], err_msg=k)
