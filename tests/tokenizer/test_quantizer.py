"""BSQ, exact PyTorch resampling, the multi-scale residual quantizer and 2x2 patchify.

The references are written here from the formulas with torch (no official code is imported).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infinity_jax.tokenizer import quantizer as Q
from infinity_jax.tokenizer import vae as V
from infinity_jax.tokenizer.resample import area_resize, bilinear_resize

torch = pytest.importorskip("torch")
F = torch.nn.functional


def rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------
# BSQ


@pytest.mark.parametrize("d", [8, 14, 32, 64])
def test_codes_on_unit_sphere_and_sign(d):
    z = rand((3, 5, 7, d), seed=d)
    codes, bits = Q.bsq(jnp.asarray(z))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(codes), axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.abs(np.asarray(codes)), 1 / math.sqrt(d), atol=1e-7)
    np.testing.assert_array_equal(np.asarray(bits), (z > 0).astype(np.int32))
    assert bits.dtype == jnp.int32


def test_zero_maps_to_minus():
    codes, bits = Q.bsq(jnp.zeros((1, 4)))
    np.testing.assert_array_equal(np.asarray(bits), 0)
    np.testing.assert_allclose(np.asarray(codes), -0.5)


def test_bits_codes_round_trip():
    z = rand((2, 6, 6, 32), seed=1)
    codes, bits = Q.bsq(jnp.asarray(z))
    np.testing.assert_allclose(np.asarray(Q.bits_to_codes(bits)), np.asarray(codes), atol=1e-7)
    _, bits2 = Q.bsq(Q.bits_to_codes(bits))
    np.testing.assert_array_equal(np.asarray(bits2), np.asarray(bits))


def test_bits_to_int_msb_first():
    bits = jnp.array([[1, 0, 0, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(np.asarray(Q.bits_to_int(bits)), [9, 1])


def test_straight_through_gradient_is_that_of_l2_normalize():
    """d codes / d z == d normalize(z) / d z: the sign step passes gradients unchanged."""
    z = jnp.asarray(rand((4, 16), seed=2) * 3)
    cot = jnp.asarray(rand((4, 16), seed=3))
    _, vjp_bsq = jax.vjp(lambda x: Q.bsq(x)[0], z)
    _, vjp_norm = jax.vjp(Q.l2_normalize, z)
    np.testing.assert_allclose(np.asarray(vjp_bsq(cot)[0]), np.asarray(vjp_norm(cot)[0]), atol=1e-6)
    # and matches torch's autograd of the official straight-through expression
    zt = torch.tensor(np.asarray(z), requires_grad=True)
    u = F.normalize(zt, dim=-1)
    q = u + (torch.where(u > 0, 1.0, -1.0) / 4.0 - u).detach()
    q.backward(torch.tensor(np.asarray(cot)))
    np.testing.assert_allclose(np.asarray(vjp_bsq(cot)[0]), zt.grad.numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# resampling vs torch F.interpolate

AREA_CASES = [((16, 16), (1, 1)), ((16, 16), (2, 2)), ((16, 16), (6, 6)), ((16, 16), (12, 12)),
              ((64, 64), (6, 6)), ((64, 48), (9, 7)), ((64, 64), (45, 36)), ((10, 7), (3, 5)),
              ((7, 5), (5, 3)), ((3, 4), (7, 9)), ((70, 56), (25, 20)), ((111, 37), (54, 18))]
BILINEAR_CASES = [((1, 1), (16, 16)), ((2, 2), (16, 16)), ((6, 6), (16, 16)), ((12, 12), (16, 16)),
                  ((16, 16), (6, 6)), ((16, 16), (12, 12)), ((5, 7), (7, 5)), ((3, 2), (100, 37)),
                  ((64, 64), (48, 48)), ((37, 111), (111, 37)), ((9, 6), (90, 45)), ((4, 3), (72, 54))]


@pytest.mark.parametrize("src,dst", AREA_CASES)
def test_area_matches_torch(src, dst):
    x = rand((2, 5) + src, seed=sum(src) + sum(dst))
    ref = F.interpolate(torch.from_numpy(x), size=dst, mode="area").numpy()
    got_nchw = np.asarray(area_resize(jnp.asarray(x), dst, layout="NCHW"))
    got_nhwc = np.asarray(area_resize(jnp.asarray(x.transpose(0, 2, 3, 1)), dst)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got_nchw, ref, atol=2e-6)
    np.testing.assert_allclose(got_nhwc, ref, atol=2e-6)
    # the official call is 5-D with t=1
    ref5 = F.interpolate(torch.from_numpy(x)[:, :, None], size=(1,) + dst, mode="area")[:, :, 0].numpy()
    np.testing.assert_allclose(got_nchw, ref5, atol=2e-6)


@pytest.mark.parametrize("src,dst", BILINEAR_CASES)
def test_bilinear_matches_torch(src, dst):
    x = rand((2, 5) + src, seed=sum(src) * 7 + sum(dst))
    got = np.asarray(bilinear_resize(jnp.asarray(x.transpose(0, 2, 3, 1)), dst)).transpose(0, 3, 1, 2)
    ref = F.interpolate(torch.from_numpy(x), size=dst, mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-6)
    ref3 = F.interpolate(torch.from_numpy(x)[:, :, None], size=(1,) + dst, mode="trilinear",
                         align_corners=False)[:, :, 0].numpy()
    np.testing.assert_allclose(got, ref3, atol=2e-6)


def test_jax_image_resize_is_not_torch_area():
    """Why resample.py exists: jax.image.resize antialiases when shrinking (16 -> 6)."""
    x = rand((1, 16, 16, 3), seed=5)
    ours = np.asarray(bilinear_resize(jnp.asarray(x), (6, 6)))
    theirs = np.asarray(jax.image.resize(jnp.asarray(x), (1, 6, 6, 3), "bilinear"))
    assert np.abs(ours - theirs).max() > 1e-2


# ---------------------------------------------------------------------------------------------
# multi-scale residual quantization vs a torch re-implementation of the formulas


def torch_multiscale(f_nchw, schedule):
    """R = F; per scale: r = area(R), q = BSQ(r), Q = trilinear(q -> H, W), R -= Q, S += Q.

    Also returns the transformer inputs: running sum S_k trilinear-resized to grid k+1.
    """
    x = torch.from_numpy(f_nchw)[:, :, None]  # (B, d, 1, H, W)
    B, d, T, H, W = x.shape
    residual, summed, bits, inputs = x, 0.0, [], []
    for k, (t, h, w) in enumerate(schedule):
        r = residual if (t, h, w) == (T, H, W) else F.interpolate(residual, size=(t, h, w), mode="area")
        u = F.normalize(r, dim=1)
        q = u + (torch.where(u > 0, 1.0, -1.0) / math.sqrt(d) - u)
        bits.append((q > 0).int()[:, :, 0].permute(0, 2, 3, 1).numpy())
        up = q if (t, h, w) == (T, H, W) else F.interpolate(q, size=(T, H, W), mode="trilinear")
        residual = residual - up
        summed = summed + up
        if k + 1 < len(schedule):
            inputs.append(F.interpolate(summed, size=schedule[k + 1], mode="trilinear")[:, :, 0]
                          .permute(0, 2, 3, 1).numpy())
    return summed[:, :, 0].permute(0, 2, 3, 1).numpy(), bits, inputs


@pytest.mark.parametrize("template,pn", [(1.0, "0.25M"), (0.5, "0.06M"), (1.333, "0.06M")])
def test_multiscale_matches_torch(template, pn):
    from infinity_jax import schedules
    sched = schedules.get_schedule(template, pn).scales
    H, W = sched[-1][1:]
    f = rand((2, 16, H, W), seed=int(template * 1000))
    ref_sum, ref_bits, ref_inputs = torch_multiscale(f, sched)

    @jax.jit
    def run(x):
        out = Q.multiscale_quantize(x, sched)
        return out, Q.codes_from_bits(out.bits), Q.var_inputs_from_bits(out.bits, sched)

    out, from_bits, inputs = run(jnp.asarray(f.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(out.quantized), ref_sum, atol=1e-5)
    assert len(out.bits) == len(sched)
    for k, (b, rb) in enumerate(zip(out.bits, ref_bits)):
        np.testing.assert_array_equal(np.asarray(b), rb, err_msg=f"scale {k}")
    np.testing.assert_allclose(np.asarray(from_bits), ref_sum, atol=1e-5)
    assert len(inputs) == len(sched) - 1
    for k, (a, b) in enumerate(zip(inputs, ref_inputs)):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-5, err_msg=f"input {k + 1}")


def test_multiscale_gradient_is_straight_through():
    """d(sum of codes)/d(latent) is the sum over scales of the resampled normalize Jacobians, not 0."""
    sched = [(1, 1, 1), (1, 2, 2), (1, 4, 4)]
    f = jnp.asarray(rand((1, 4, 4, 8), seed=9))
    g = jax.jit(jax.grad(lambda x: jnp.sum(Q.multiscale_quantize(x, sched).quantized ** 2)))(f)
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).max()) > 0


# ---------------------------------------------------------------------------------------------
# spatial patchify (8B tokenizer)


def test_patchify_is_pixel_unshuffle():
    x = rand((2, 8, 6, 5), seed=11)  # NHWC
    got = np.asarray(V.patchify(jnp.asarray(x)))
    ref = F.pixel_unshuffle(torch.from_numpy(x.transpose(0, 3, 1, 2)), 2).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got, ref)
    # channel c*4 + 2i + j holds channel c at offset (i, j)
    assert got[0, 1, 2, 3 * 4 + 2 * 1 + 0] == x[0, 2 * 1 + 1, 2 * 2 + 0, 3]
    np.testing.assert_array_equal(np.asarray(V.unpatchify(jnp.asarray(got))), x)
    bits = (x > 0).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(V.unpatchify(V.patchify(jnp.asarray(bits)))), bits)


def test_patchify_model_packs_inputs():
    """A patchify VAE takes transformer-grid schedules and returns packed 4d-channel inputs."""
    cfg = V.VAEConfig.official(14, apply_spatial_patchify=True, base_ch=24, num_res_blocks=1)
    from flax import nnx
    model = nnx.eval_shape(lambda: V.BSQVAE(cfg))  # only the quantizer side is run here
    tsched = [(1, 1, 1), (1, 2, 2), (1, 4, 4)]
    f = jnp.asarray(rand((1, 8, 8, 14), seed=12))

    @jax.jit
    def run(f):
        out = model.quantize(f, tsched)  # transformer schedule: doubled to the VAE grid
        packed_bits = [V.patchify(b) for b in out.bits]
        return (out.bits, model.var_inputs(out.bits, tsched), model.var_inputs(out.bits, tsched, packed=False),
                model.bits_to_codes(packed_bits), model.bits_to_codes(out.bits))

    bits, inputs, plain, codes_packed, codes = run(f)
    assert [b.shape[1:3] for b in bits] == [(2, 2), (4, 4), (8, 8)]
    assert [v.shape for v in inputs] == [(1, 2, 2, 56), (1, 4, 4, 56)]
    np.testing.assert_array_equal(np.asarray(inputs[1]), np.asarray(V.patchify(plain[1])))
    np.testing.assert_allclose(np.asarray(codes_packed), np.asarray(codes))


def _torch_weights(n_in, n_out, mode):
    """The (n_out, n_in) matrix torch applies along H, read off by resizing an identity."""
    eye = torch.eye(n_in).reshape(n_in, 1, n_in, 1).expand(n_in, 1, n_in, 2).contiguous()
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(eye, size=(n_out, 2), mode=mode, **kw)[:, 0, :, 0].T.numpy()


def test_resample_matrices_bit_exact():
    """The 1-D weights equal torch's exactly (torch's source index uses one fused rounding)."""
    from infinity_jax.tokenizer.resample import area_matrix, bilinear_matrix
    sizes = [1, 2, 3, 4, 5, 6, 7, 9, 12, 16, 21, 37, 45, 64, 111]
    for a in sizes:
        for b in sizes:
            np.testing.assert_array_equal(bilinear_matrix(a, b), _torch_weights(a, b, "bilinear"),
                                          err_msg=f"bilinear {a}->{b}")
            np.testing.assert_array_equal(area_matrix(a, b), _torch_weights(a, b, "area"),
                                          err_msg=f"area {a}->{b}")
