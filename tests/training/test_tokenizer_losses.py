"""BSQ tokenizer losses, and a tiny tokenizer training run that checkpoints, resumes and exports."""
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infinity_jax import config_files
from infinity_jax.tokenizer import multiscale_quantize
from infinity_jax.tokenizer.quantizer import l2_normalize
from infinity_jax.training import tokenizer_losses as TL

SCHED = ((1, 1, 1), (1, 2, 2), (1, 4, 4))


def test_quantize_with_aux_matches_multiscale_quantize():
    f = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 16))
    ref = multiscale_quantize(f, SCHED)
    out = TL.quantize_with_aux(f, SCHED)
    np.testing.assert_array_equal(np.asarray(out.quantized), np.asarray(ref.quantized))
    for a, b in zip(out.bits, ref.bits, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(out.partial[-1]), np.asarray(ref.quantized))
    for u in out.normalized:
        np.testing.assert_allclose(np.linalg.norm(np.asarray(u), axis=-1), 1.0, rtol=1e-5)
    # gradients reach the features through every scale (straight-through)
    g = jax.grad(lambda x: jnp.sum(TL.quantize_with_aux(x, SCHED).quantized ** 2))(f)
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).sum()) > 0
    with pytest.raises(ValueError, match="latent grid"):
        TL.quantize_with_aux(f, SCHED[:2])


def test_commitment_is_zero_on_codes_and_positive_elsewhere():
    d = 8
    bits = jax.random.bernoulli(jax.random.PRNGKey(1), 0.5, (3, 2, 2, d))
    q = (2.0 * bits - 1.0) / math.sqrt(d)
    assert float(TL.commitment_loss([q], [q])) == pytest.approx(0.0, abs=1e-7)
    u = l2_normalize(q + 0.1 * jax.random.normal(jax.random.PRNGKey(2), q.shape))
    want = float(jnp.mean(jnp.sum((q - u) ** 2, -1)))
    assert float(TL.commitment_loss([q], [u])) == pytest.approx(want, rel=1e-5)
    # no gradient to the codes (they are stop-gradient'ed)
    g = jax.grad(lambda c: TL.commitment_loss([c], [u]))(q)
    assert float(jnp.abs(g).max()) == 0.0


def _all_codes(d):
    idx = np.arange(2 ** d)[:, None]
    return (2.0 * ((idx >> np.arange(d - 1, -1, -1)) & 1) - 1.0) / math.sqrt(d)


def test_entropy_terms_limits():
    d, g = 4, 4
    # every code exactly once, confident: per-sample entropy ~0, codebook entropy = d ln 2 (uniform)
    u = jnp.asarray(_all_codes(d), jnp.float32)
    hs, hc = TL.soft_entropy(u, group_size=g, inv_temperature=100.0)
    assert float(hs) < 1e-3
    assert float(hc) == pytest.approx(d * math.log(2), rel=1e-3)
    # one code repeated: codebook entropy ~0 -> the penalty is higher than with uniform usage
    same = jnp.tile(u[:1], (16, 1))
    hs2, hc2 = TL.soft_entropy(same, group_size=g, inv_temperature=100.0)
    assert float(hc2) < 1e-3
    pen_uniform = TL.entropy_loss([u], group_size=g)[0]
    pen_collapsed = TL.entropy_loss([same], group_size=g)[0]
    assert float(pen_collapsed) > float(pen_uniform)
    # vectors on the bit boundaries are maximally uncertain: per-sample entropy = d ln 2
    amb = jnp.zeros((5, d)).at[:, 0].set(1e-9)
    hs3, _ = TL.soft_entropy(l2_normalize(amb + 1e-12), group_size=g, inv_temperature=100.0)
    assert float(hs3) > 0.5 * (d - 1) * math.log(2)
    # analytical per-bit form agrees with the group form for factorised distributions
    x = l2_normalize(jax.random.normal(jax.random.PRNGKey(3), (64, 8)))
    a = TL.soft_entropy(x, group_size=8, inv_temperature=3.0, persample="group")[0]
    b = TL.soft_entropy(x, group_size=8, inv_temperature=3.0, persample="analytical")[0]
    assert float(a) == pytest.approx(float(b), rel=1e-4)
    with pytest.raises(ValueError, match="divide"):
        TL.soft_entropy(jnp.ones((2, 6)), group_size=4)


def test_entropy_gradient_spreads_collapsed_codes():
    """A gradient step on the penalty increases the codebook entropy of a nearly collapsed batch."""
    key = jax.random.PRNGKey(4)
    x = l2_normalize(jnp.ones((32, 8)) + 0.3 * jax.random.normal(key, (32, 8)))
    loss = lambda v: TL.entropy_loss([l2_normalize(v)], group_size=4, inv_temperature=10.0)[0]  # noqa: E731
    h0 = TL.soft_entropy(x, group_size=4, inv_temperature=10.0)[1]
    y = x - 5.0 * jax.grad(loss)(x)
    h1 = TL.soft_entropy(l2_normalize(y), group_size=4, inv_temperature=10.0)[1]
    assert float(h1) > float(h0)


def test_codebook_usage_and_psnr():
    bits = jnp.asarray([[0, 0], [0, 1], [1, 0], [1, 0]])
    assert float(TL.codebook_usage(bits, 2)) == pytest.approx(0.75)
    x = jnp.zeros((2, 4, 4, 3))
    assert float(TL.psnr(x, x + 0.02)) == pytest.approx(10 * math.log10(4 / 0.0004), rel=1e-4)
    a = np.zeros((1, 4, 4, 3), np.uint8)
    assert TL.psnr_uint8(a, a + 5) == pytest.approx(10 * math.log10(255 ** 2 / 25), rel=1e-6)
    assert float(TL.reconstruction_loss(x, x + 0.5, l1=1.0, l2=2.0)) == pytest.approx(0.5 + 2 * 0.25)


def test_perceptual_proxy_and_gan_losses():
    net = TL.RandomFeatures(widths=(8, 8, 8), seed=0)
    x = jax.random.uniform(jax.random.PRNGKey(5), (2, 16, 16, 3), minval=-1, maxval=1)
    assert float(TL.perceptual_loss(x, x, net)) == pytest.approx(0.0, abs=1e-6)
    blur = (x + jnp.roll(x, 1, 1) + jnp.roll(x, 1, 2)) / 3
    assert float(TL.perceptual_loss(x, blur, net)) > 0.01
    assert float(TL.gradient_loss(x, x + 0.3)) == pytest.approx(0.0, abs=1e-6)  # a colour shift has no edges
    assert float(TL.gradient_loss(x, blur)) > 0.01
    from flax import nnx

    d = TL.PatchDiscriminator(base_ch=16, n_layers=2, rngs=nnx.Rngs(0))
    out = d(x)
    assert out.shape[0] == 2 and out.shape[-1] == 1 and out.ndim == 4
    assert float(TL.hinge_d_loss(jnp.full((2,), 2.0), jnp.full((2,), -2.0))) == 0.0
    assert float(TL.hinge_d_loss(jnp.zeros(2), jnp.zeros(2))) == pytest.approx(1.0)
    assert float(TL.hinge_g_loss(jnp.full((3,), 0.5))) == pytest.approx(-0.5)


def _config(steps, gan=False, perceptual=False):
    p = pathlib.Path(__file__).resolve().parents[2] / "configs" / "tokenizer.py"
    c = config_files.load(f"{p}:preset=shapes,runlocal=True")
    c.model.update(base_ch=48, ch_mult=(1, 1, 2), patch_size=4, codebook_dim=8)
    c.schedule = ((1, 1), (2, 2), (4, 4))  # 16x16 images
    c.crop = 0
    c.data.factory_kwargs = dict(size=16, seed=0, length=512)
    c.data.update(num_threads=1, prefetch=1)
    c.batch_size = 8
    c.total_steps = steps
    c.checkpoint.update(every=2, async_save=False)
    c.eval.update(every=steps, num_images=8, factory="shapes_heldout",
                  factory_kwargs=dict(size=16, seeds=1))
    c.log.update(every=1, progress=False)
    c.loss.early_scales.weight = 0.5
    if gan:
        c.loss.gan.update(weight=0.1, start=1, base_ch=16, n_layers=2)
    if perceptual:
        c.loss.perceptual.weight = 0.1
        c.loss.edge.weight = 0.5
    return c


def test_tokenizer_trainer_resumes_and_exports(tmp_path):
    from infinity_jax.tokenizer import VAEConfig, load
    from infinity_jax.training.tokenizer_trainer import EXPORT_CONFIG, EXPORT_NAME, TokenizerTrainer

    work = tmp_path / "tok"
    t1 = TokenizerTrainer(_config(2, gan=True, perceptual=True), str(work))
    last1 = t1.train()
    assert last1["step"] == 2 and np.isfinite(last1["loss"]) and "gan_d" in last1 and "perceptual" in last1
    assert "edge" in last1 and "recon_early" in last1
    t2 = TokenizerTrainer(_config(4, gan=True, perceptual=True), str(work))
    last2 = t2.train()
    assert last2["step"] == 4 and np.isfinite(last2["eval/psnr"])
    steps = [json.loads(ln)["step"] for ln in (work / "metrics.jsonl").read_text().splitlines()]
    assert 3 in steps and 4 in steps and sorted(set(steps)) == [1, 2, 3, 4]
    assert (work / "tensorboard").is_dir()
    cfg = json.loads((work / EXPORT_CONFIG).read_text())
    vcfg = VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["vae"].items()})
    model = load(work / EXPORT_NAME, vcfg)
    x = jnp.zeros((1, 16, 16, 3))
    y = model(x, [(1, 1, 1), (1, 2, 2), (1, 4, 4)])
    ref = t2.model_from_params(jax.device_get(t2.final_params()))(x, [(1, 1, 1), (1, 2, 2), (1, 4, 4)])
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-5)
