"""Parity of the NNX BSQ-VAE with the official PyTorch code (both reference fixtures, fp32).

official-tiny: stride 16, d = 32, tokenizer grid = transformer grid (1x1 .. 16x16).
official-patchify (the 8B layout): stride 8, d = 14, tokenizer grid = 2 x transformer grid
(2x2 .. 32x32); the transformer's inputs and labels pack 2x2 tokenizer tokens (56 channels).

Fixture layouts are the official ones (NCHW; bits ``[B, 1, h, w, d]``; codes ``[B, d, 1, h, w]``);
ours are channels-last, so every comparison transposes.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import patchify_flag, tokenizer_schedule
from infinity_jax.tokenizer import convert
from infinity_jax.tokenizer import vae as V

ATOL = 1e-4
SCHEDULE = [(1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 6, 6), (1, 8, 8), (1, 12, 12), (1, 16, 16)]
K = len(SCHEDULE)
# (codebook_dim, base_ch, ch_mult, num_res_blocks, patch_size, apply_spatial_patchify) per fixture
CONFIGS = {"official-tiny": (32, 32, (1, 2, 4, 4, 4), 2, 16, False),
           "official-patchify": (14, 32, (1, 2, 4, 4), 2, 8, True)}


def nchw_to_nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


def codes5_to_nhwc(x):  # [B, d, 1, h, w] -> [B, h, w, d]
    return np.asarray(x)[:, :, 0].transpose(0, 2, 3, 1)


def maxerr(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@pytest.fixture(scope="module")
def setup(official):
    manifest = json.loads((official / "manifest.json").read_text())
    # the whole manifest, as a user passes it: the patchify flag is in its transformer section
    config = V.VAEConfig.from_official(manifest)
    model = convert.load(official / "weights_vae.npz", config)
    golden = dict(np.load(official / "golden_vae.npz"))
    image = nchw_to_nhwc(np.load(official / "inputs.npz")["image"])
    return manifest, model, golden, jnp.asarray(image)


@pytest.fixture(scope="module")
def sched(official):
    """The tokenizer's grids (twice the transformer's with spatial patchify)."""
    return list(tokenizer_schedule(str(official)))


@pytest.fixture(scope="module")
def encoded(setup, sched):
    _, model, _, image = setup

    @jax.jit
    def run(image):  # one compile for the raw latent and the quantizer outputs
        features = model.encode_features(image)
        out = model.quantize(features, sched)
        return features, out.quantized, out.bits

    return run(image)


@pytest.fixture(scope="module")
def decode(setup):
    return V.jit_decode(setup[1])


def test_config_and_param_count(setup, official):
    manifest, model, _, _ = setup
    cfg = model.config
    assert (cfg.codebook_dim, cfg.base_ch, cfg.ch_mult, cfg.num_res_blocks, cfg.patch_size,
            cfg.apply_spatial_patchify) == CONFIGS[official.name]
    assert cfg.apply_spatial_patchify == patchify_flag(str(official))
    from flax import nnx
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == manifest["config"]["vae"]["n_params"]


def test_raw_features(setup, encoded):
    _, _, golden, _ = setup
    err = maxerr(encoded[0], nchw_to_nhwc(golden["raw_features"]))
    print(f"raw_features max abs err {err:.3g}")
    assert err < ATOL


def test_bits_identical_every_scale(setup, encoded, sched):
    _, _, golden, _ = setup
    bits = encoded[2]
    assert len(bits) == len(sched) == K
    for k in range(K):
        ref = golden[f"bits_scale{k:02d}"][:, 0]
        assert bits[k].shape == ref.shape and bits[k].dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(bits[k]), ref, err_msg=f"scale {k}")


def test_z_quantized(setup, encoded):
    _, _, golden, _ = setup
    err = maxerr(encoded[1], nchw_to_nhwc(golden["z_quantized"]))
    print(f"z_quantized max abs err {err:.3g}")
    assert err < ATOL


def test_var_inputs_area_match_vae_golden(setup, encoded, sched):
    """golden ``var_input_scaleSS`` is MultiScaleBSQ's own ``var_inputs``: area-resized running sums
    on the tokenizer grid (never packed)."""
    _, model, golden, _ = setup
    vin, bil = jax.jit(lambda b: (model.var_inputs(b, sched, mode="area", packed=False),
                                  model.var_inputs(b, sched, mode="bilinear", packed=False)))(encoded[2])
    assert len(vin) == K - 1
    errs = [maxerr(vin[k - 1], codes5_to_nhwc(golden[f"var_input_scale{k:02d}"])) for k in range(1, K)]
    print("var_input (area) max abs err per scale", [f"{e:.3g}" for e in errs])
    assert max(errs) < ATOL
    # The bilinear (transformer) resize differs where the ratio is not a power of two (16 -> 6, 12;
    # 32 -> 12, 24).
    assert maxerr(bil[2], codes5_to_nhwc(golden["var_input_scale03"])) > 1e-3


def test_var_inputs_bilinear_match_transformer_input(setup, official, sched):
    """The transformer's input (BitwiseSelfCorrection.flip_requant) uses trilinear resizing; with
    spatial patchify inputs and labels are packed 2x2 (official ``pixel_unshuffle`` order)."""
    _, model, golden, _ = setup
    gt = np.load(official / "golden_transformer.npz")
    bits = [jnp.asarray(golden[f"bits_scale{k:02d}"][:, 0]) for k in range(K)]
    vin = jax.jit(lambda b: model.var_inputs(b, sched))(bits)  # default: bilinear, packed as the model's layout
    C = model.config.token_dim
    flat = np.concatenate([np.asarray(v).reshape(2, -1, C) for v in vin], axis=1)
    assert flat.shape == gt["x_BLC_wo_prefix"].shape
    err = maxerr(flat, gt["x_BLC_wo_prefix"])
    print(f"x_BLC_wo_prefix (bilinear) max abs err {err:.3g}")
    assert err < ATOL
    packed = [V.patchify(b) if model.config.apply_spatial_patchify else b for b in bits]
    labels = np.concatenate([np.asarray(b).reshape(2, -1, C) for b in packed], axis=1)
    np.testing.assert_array_equal(labels, gt["gt_BL_bits"])


def test_summed_codes_from_bits(setup):
    _, model, golden, _ = setup
    bits = [jnp.asarray(golden[f"bits_scale{k:02d}"][:, 0]) for k in range(K)]
    err = maxerr(model.bits_to_codes(bits), codes5_to_nhwc(golden["summed_codes_from_bits"]))
    print(f"summed_codes_from_bits max abs err {err:.3g}")
    assert err < ATOL


def test_recon_from_z_quantized(setup, decode):
    _, _, golden, _ = setup
    recon = decode(jnp.asarray(nchw_to_nhwc(golden["z_quantized"])))
    err = maxerr(recon, nchw_to_nhwc(golden["recon"]))
    print(f"recon max abs err {err:.3g}")
    assert recon.shape == nchw_to_nhwc(golden["recon"]).shape == (2, 256, 256, 3)
    assert err < ATOL
    assert float(jnp.max(jnp.abs(recon))) <= 1.0


def test_recon_from_bits(setup, encoded, decode):
    _, model, golden, _ = setup
    codes = model.bits_to_codes(encoded[2])
    err = maxerr(decode(codes), nchw_to_nhwc(golden["recon_from_bits"]))
    print(f"recon_from_bits max abs err {err:.3g}")
    assert err < ATOL


def test_plain_upsample_matches_subpixel(setup):
    """The default sub-pixel Upsample (four 2x2 convs) is the same map as nearest-x2 + conv3x3."""
    _, model, _, _ = setup
    up = model.decoder.up[1].upsample  # 64 channels, loaded weights
    x = jax.random.normal(jax.random.key(3), (2, 12, 10, 64))
    fast = jax.jit(lambda x: V._subpixel_upsample_conv(x, up.conv))(x)
    plain = jax.jit(lambda x: up.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)))(x)
    assert fast.shape == (2, 24, 20, 64)
    assert maxerr(fast, plain) < 2e-5 * max(1.0, float(jnp.abs(plain).max()))


def test_input_errors(setup):
    _, model, _, image = setup
    s, d = model.config.stride, model.config.codebook_dim
    with pytest.raises(ValueError, match="NCHW"):
        model.encode_features(jnp.zeros((1, 3, 64, 64)))
    with pytest.raises(ValueError, match=f"not divisible by the VAE stride {s}"):
        model.encode_features(jnp.zeros((1, 4 * s + s // 2, 64, 3)))
    with pytest.raises(ValueError, match="channels-first"):
        model.decode(jnp.zeros((1, d, 4, 4)))
    with pytest.raises(ValueError, match="does not match the latent grid"):
        model.quantize(jnp.zeros((1, 16, 16, d)), [(1, 1, 1), (1, 5, 5)])


def test_default_schedule_is_official():
    assert V.default_schedule((16, 16)) == tuple(SCHEDULE)
    patch = V.VAEConfig.official(14, apply_spatial_patchify=True, base_ch=32)
    # 8B: the VAE grid is twice the transformer grid.
    assert V.default_schedule((32, 32), patch)[-1] == (1, 32, 32)
    assert V.default_schedule((32, 32), patch)[0] == (1, 2, 2)


def test_bfloat16_activations_and_logical_axes():
    """A small random model runs in bf16 (outputs float32) and every weight carries axis names."""
    from flax import nnx

    from infinity_jax.sharding import make_mesh, state_shardings
    cfg = V.VAEConfig(codebook_dim=16, base_ch=32, ch_mult=(1, 2), patch_size=2, num_res_blocks=1,
                      dtype="bfloat16")
    model = V.init(cfg, seed=1)
    x = jax.random.uniform(jax.random.key(0), (1, 8, 8, 3), minval=-1, maxval=1)
    quantized, bits = V.jit_encode(model, [(1, 1, 1), (1, 4, 4)])(x)
    assert quantized.dtype == jnp.float32 and [b.shape for b in bits] == [(1, 1, 1, 16), (1, 4, 4, 16)]
    y = V.jit_decode_bits(model)(bits)
    assert y.shape == (1, 8, 8, 3) and y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))
    params = jax.tree.leaves(nnx.state(model, nnx.Param), is_leaf=lambda v: isinstance(v, nnx.Variable))
    for p in params:
        names = p.get_metadata().get("out_sharding")
        assert names is not None and len(names) == p.get_value().ndim
    shardings = state_shardings(nnx.state(model, nnx.Param), make_mesh({"data": 2, "tensor": 4}))
    assert len(jax.tree.leaves(shardings)) == len(params)


def test_spatial_patchify_end_to_end():
    """8B layout: stride 8, transformer schedule doubled on the VAE grid, 4d-channel packing."""
    cfg = V.VAEConfig.official(14, apply_spatial_patchify=True, base_ch=24, num_res_blocks=1)
    assert (cfg.stride, cfg.token_stride, cfg.token_dim) == (8, 16, 56)
    model = V.init(cfg)
    x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3), minval=-1, maxval=1)
    tsched = [(1, 1, 1), (1, 2, 2)]  # transformer grids; the VAE grid is 4x4
    quantized, bits = V.jit_encode(model, tsched)(x)
    assert quantized.shape == (1, 4, 4, 14) and [b.shape for b in bits] == [(1, 2, 2, 14), (1, 4, 4, 14)]
    labels = [V.patchify(b) for b in bits]
    assert [b.shape for b in labels] == [(1, 1, 1, 56), (1, 2, 2, 56)]
    assert [v.shape for v in model.var_inputs(bits, tsched)] == [(1, 2, 2, 56)]
    # packed bits are accepted and unpacked
    np.testing.assert_allclose(np.asarray(model.bits_to_codes(labels)), np.asarray(quantized), atol=1e-6)
    assert jax.eval_shape(model.decode_bits, labels).shape == (1, 32, 32, 3)
