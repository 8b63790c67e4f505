"""Binary spherical quantization (BSQ) and the multi-scale residual bitwise quantizer.

Layout convention: latents are channels-last, ``(B, H, W, d)``; bits are ``(B, h, w, d)``
integers in {0, 1}, in channel order (bit j = channel j).

BSQ of a vector z in R^d: ``u = z / ||z||``, ``q = sign(u) / sqrt(d)`` (sign(0) = -1), with a
straight-through gradient ``u + stop_gradient(q - u)``. Codes therefore lie on the unit
sphere and a code is fully described by its d bits.

Multi-scale residual quantization over a schedule ``(1, h_k, w_k)``, k = 0..K-1, of a latent
F with grid (H, W)::

    R = F; S = 0
    for k:  r_k = area(R -> h_k x w_k)        (identity at full size)
            q_k, bits_k = BSQ(r_k)
            Q_k = bilinear(q_k -> H x W)      (identity at full size)
            R -= stop_gradient(Q_k); S += Q_k
    decoder input = S
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from infinity_jax.tokenizer.resample import area_resize, bilinear_resize

L2_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = L2_EPS) -> jax.Array:
    """``F.normalize``: x / max(||x||, eps)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def bsq(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Quantize the last axis of z. Returns (codes with straight-through gradient, bits int32)."""
    z = z.astype(jnp.float32)
    d = z.shape[-1]
    u = l2_normalize(z)
    q = jnp.where(u > 0, 1.0, -1.0).astype(jnp.float32) * (1.0 / d ** 0.5)
    codes = u + jax.lax.stop_gradient(q - u)
    bits = (q > 0).astype(jnp.int32)
    return codes, bits


def bits_to_codes(bits: jax.Array) -> jax.Array:
    """{0,1} bits (..., d) -> codes ``(2b - 1) / sqrt(d)`` (..., d), float32."""
    d = bits.shape[-1]
    s = 1.0 / d ** 0.5
    codes = bits.astype(jnp.float32) * (2 * s) - s
    return l2_normalize(codes)


def bits_to_int(bits: jax.Array) -> jax.Array:
    """Pack bits (..., d<=63) into integers with channel 0 as the most significant bit."""
    d = bits.shape[-1]
    weights = 2 ** jnp.arange(d - 1, -1, -1, dtype=jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)
    return jnp.sum(bits.astype(weights.dtype) * weights, axis=-1)


class MultiScaleOutput(NamedTuple):
    """Result of :func:`multiscale_quantize`.

    Attributes:
      quantized: ``(B, H, W, d)`` sum of all upsampled codes (decoder input), with
        straight-through gradient to the input latent.
      bits: list over scales of ``(B, h_k, w_k, d)`` int32.
      codes: list over scales of ``(B, h_k, w_k, d)`` code maps.
    """

    quantized: jax.Array
    bits: list
    codes: list


def _grid(scale: Sequence[int]) -> tuple[int, int]:
    return int(scale[-2]), int(scale[-1])


class ScaleStep(NamedTuple):
    """One scale of the residual quantization: the resized residual ``r``, its code ``q`` and bits
    (``(B, h, w, d)``), and the running sum of upsampled codes ``summed`` (``(B, H, W, d)``)."""

    residual: jax.Array
    code: jax.Array
    bits: jax.Array
    summed: jax.Array


def residual_scales(features: jax.Array, schedule: Sequence[Sequence[int]]) -> list[ScaleStep]:
    """Residual BSQ of ``features (B, H, W, d)`` over ``schedule``, scale by scale (last grid = (H, W))."""
    B, H, W, d = features.shape
    if _grid(schedule[-1]) != (H, W):
        raise ValueError(f"last scale {tuple(schedule[-1])} does not match the latent grid {(H, W)}")
    x = features.astype(jnp.float32)
    residual = x
    summed = jnp.zeros_like(x)
    steps = []
    for scale in schedule:
        r = area_resize(residual, _grid(scale))
        q, bits = bsq(r)
        up = bilinear_resize(q, (H, W))
        residual = residual - jax.lax.stop_gradient(up)
        summed = summed + up
        steps.append(ScaleStep(r, q, bits, summed))
    return steps


def multiscale_quantize(features: jax.Array, schedule: Sequence[Sequence[int]]) -> MultiScaleOutput:
    """Residual BSQ of ``features (B, H, W, d)`` over ``schedule``; the last grid must be (H, W)."""
    steps = residual_scales(features, schedule)
    return MultiScaleOutput(steps[-1].summed, [s.bits for s in steps], [s.code for s in steps])


def codes_from_bits(bits_list: Sequence[jax.Array], grid: tuple[int, int] | None = None) -> jax.Array:
    """Sum of the upsampled codes of every scale's bits: ``(B, H, W, d)``."""
    if grid is None:
        grid = tuple(bits_list[-1].shape[1:3])
    summed = 0.0
    for bits in bits_list:
        summed = summed + bilinear_resize(bits_to_codes(bits), grid)
    return summed


def next_scale_inputs(summed_codes_per_scale: Sequence[jax.Array], schedule: Sequence[Sequence[int]]) -> list:
    """Transformer inputs: the running code sum after scale k resized (bilinear) to grid k+1."""
    return [bilinear_resize(s, _grid(schedule[k + 1])) for k, s in enumerate(summed_codes_per_scale[:-1])]


def var_inputs_from_bits(bits_list: Sequence[jax.Array], schedule: Sequence[Sequence[int]]) -> list:
    """Transformer inputs for scales 1..K-1 from the bits of every scale.

    Returns a list of K-1 arrays ``(B, h_{k+1}, w_{k+1}, d)``: the running sum of upsampled codes
    of scales <= k, bilinearly resized (no antialias) to the grid of scale k+1.
    """
    H, W = _grid(schedule[-1])
    summed = 0.0
    out = []
    for k, bits in enumerate(bits_list[:-1]):
        summed = summed + bilinear_resize(bits_to_codes(bits), (H, W))
        out.append(bilinear_resize(summed, _grid(schedule[k + 1])))
    return out
