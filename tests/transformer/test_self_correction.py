"""Bitwise Self-Correction: no-flip identity, flip statistics, and the correcting labels."""
import jax
import jax.numpy as jnp
import numpy as np

from helpers import fixture, schedule
from infinity_jax.tokenizer.quantizer import bits_to_codes
from infinity_jax.tokenizer.resample import bilinear_resize
from infinity_jax.tokenizer.packing import patchify
from infinity_jax.transformer.self_correction import flip_requant

SCALES = [(1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 6, 6), (1, 8, 8), (1, 12, 12), (1, 16, 16)]


def _features(official_tiny):
    _, _, g = fixture(str(official_tiny))
    return jnp.asarray(g["golden_vae"]["raw_features"].transpose(0, 2, 3, 1)), g["golden_vae"]


def test_probability_zero_reproduces_tokenizer_bits(official_tiny):
    feat, gv = _features(official_tiny)
    out = flip_requant(feat, schedule(str(official_tiny)), jax.random.PRNGKey(0), strengths=[0.0] * 7)
    for k in range(7):
        np.testing.assert_array_equal(np.asarray(out.clean_bits[k]), gv[f"bits_scale{k:02d}"][:, 0])
        np.testing.assert_array_equal(np.asarray(out.used_bits[k]), gv[f"bits_scale{k:02d}"][:, 0])


def test_flip_rate_and_corrected_labels():
    rng = np.random.default_rng(0)
    feat = jnp.asarray(rng.normal(size=(8, 16, 16, 32)).astype(np.float32))
    p, k = 0.2, 5
    strengths = [0.0] * 7
    strengths[k] = p
    clean = flip_requant(feat, SCALES)
    flipped = flip_requant(feat, SCALES, jax.random.PRNGKey(1), strengths=strengths)
    # measured flip rate at scale k within 3 sigma of p
    n = np.asarray(flipped.clean_bits[k]).size
    rate = float(np.mean(np.asarray(flipped.used_bits[k]) != np.asarray(flipped.clean_bits[k])))
    assert abs(rate - p) < 3 * np.sqrt(p * (1 - p) / n), (rate, n)
    # labels of scales <= k are the clean ones; later labels change
    offs = np.cumsum([0] + [h * w for _, h, w in SCALES])
    lab_c, lab_f = np.asarray(clean.labels), np.asarray(flipped.labels)
    np.testing.assert_array_equal(lab_c[:, : offs[k + 1]], lab_f[:, : offs[k + 1]])
    assert np.mean(lab_c[:, offs[k + 1]:] != lab_f[:, offs[k + 1]:]) > 0.01
    # inputs up to scale k are unchanged; the input of scale k+1 carries the corruption
    x_c, x_f = np.asarray(clean.x_BLC_wo_prefix), np.asarray(flipped.x_BLC_wo_prefix)
    np.testing.assert_allclose(x_c[:, : offs[k + 1] - 1], x_f[:, : offs[k + 1] - 1], atol=1e-6)
    assert np.abs(x_c[:, offs[k + 1] - 1:] - x_f[:, offs[k + 1] - 1:]).max() > 1e-3

    # the new labels correct the mistake: corrupted bits + recomputed labels reconstruct the
    # latent better than corrupted bits + the original labels
    def recon(bits_per_scale):
        return sum(bilinear_resize(bits_to_codes(jnp.asarray(b)), (16, 16)) for b in bits_per_scale)

    used = [np.asarray(b) for b in flipped.used_bits]
    corrected = recon(used[: k + 1] + [np.asarray(b) for b in flipped.clean_bits[k + 1:]])
    uncorrected = recon(used[: k + 1] + [np.asarray(b) for b in clean.clean_bits[k + 1:]])
    err = lambda r: float(jnp.mean(jnp.square(r - feat)))
    assert err(corrected) < err(uncorrected)


def test_random_strength_is_deterministic_given_key():
    feat = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 32)).astype(np.float32))
    a = flip_requant(feat, SCALES, jax.random.PRNGKey(3), strength=0.3)
    b = flip_requant(feat, SCALES, jax.random.PRNGKey(3), strength=0.3)
    c = flip_requant(feat, SCALES, jax.random.PRNGKey(4), strength=0.3)
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    assert not np.array_equal(np.asarray(a.x_BLC_wo_prefix), np.asarray(c.x_BLC_wo_prefix))
    s = np.asarray(a.strengths)
    assert np.all((s >= 0) & (s <= 0.3 + 1e-6)) and np.allclose(s * 100, np.round(s * 100), atol=1e-4)


def test_patchify_schedule_shapes():
    feat = jnp.asarray(np.random.default_rng(3).normal(size=(1, 16, 16, 14)).astype(np.float32))
    scales = [(1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8)]  # vae grids 2,4,8,16
    out = flip_requant(feat, scales, patchify=True)
    assert out.x_BLC_wo_prefix.shape == (1, 4 + 16 + 64, 56)
    assert out.labels.shape == (1, 1 + 4 + 16 + 64, 56)
    # the labels are the tokenizer's bits packed 2x2 (the one patchify of the package)
    packed = np.concatenate([np.asarray(patchify(b)).reshape(1, -1, 56) for b in out.clean_bits], axis=1)
    np.testing.assert_array_equal(np.asarray(out.labels), packed)


def test_strength_is_drawn_per_sample():
    """Official: one strength per scale per rank's local batch; here one per sample and scale."""
    feat = jnp.asarray(np.random.default_rng(2).normal(size=(16, 16, 16, 32)).astype(np.float32))
    out = flip_requant(feat, SCALES, jax.random.PRNGKey(5), strength=0.3, apply_layers=6)
    s = np.asarray(out.strengths)
    assert s.shape == (16, 7)
    assert np.all(s[:, 6] == 0)  # beyond apply_layers
    for k in range(6):
        assert len(np.unique(s[:, k])) > 3, s[:, k]  # independent draws across the batch
    k = 5  # 12x12x32 bits per sample: each sample's flip rate follows its own strength
    used, clean = np.asarray(out.used_bits[k]), np.asarray(out.clean_bits[k])
    n = clean[0].size
    for b in range(16):
        rate = float(np.mean(used[b] != clean[b]))
        p = s[b, k]
        assert abs(rate - p) <= 4 * np.sqrt(max(p * (1 - p), 1e-4) / n) + 1e-9, (b, rate, p)
