"""Exact PyTorch-compatible resampling as precomputed 1-D matrices.

PyTorch's ``F.interpolate(mode='area')`` (adaptive average pooling with overlapping
floor/ceil bins) and ``mode='bilinear'/'trilinear', align_corners=False`` (half-pixel
centres, no antialias, also when shrinking) are what the official tokenizer and the
transformer's inputs use. ``jax.image.resize`` antialiases when it shrinks, so it differs.
Here each resize is two small matrices applied along H and W; they are constants per
(in, out) pair, cached on the host.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


@functools.lru_cache(maxsize=None)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging matrix of adaptive average pooling."""
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)  # ceil
        m[i, start:end] = 1.0 / (end - start)
    return m.astype(np.float32)


@functools.lru_cache(maxsize=None)
def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation matrix, align_corners=False, no antialias."""
    m = np.zeros((n_out, n_in), np.float32)
    if n_in == n_out:
        np.fill_diagonal(m, 1.0)
        return m
    scale = np.float32(n_in) / np.float32(n_out)  # one float32 division, as PyTorch
    for i in range(n_out):
        # PyTorch computes scale * (i + 0.5) - 0.5 in float32 with a fused multiply-add (one
        # rounding); the float64 product of two float32 values is exact, so this matches it.
        src = np.float32(np.float64(scale) * (i + 0.5) - 0.5)
        src = max(src, np.float32(0.0))
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = np.float32(src - np.float32(i0))
        m[i, i0] += np.float32(1.0) - lam
        m[i, i1] += lam
    return m


def _apply(x: jax.Array, mh: np.ndarray, mw: np.ndarray, layout: str) -> jax.Array:
    mh = jnp.asarray(mh, dtype=x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)
    mw = jnp.asarray(mw, dtype=mh.dtype)
    if layout == "NHWC":
        return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw, precision=_HIGHEST)
    if layout == "NCHW":
        return jnp.einsum("oh,bchw,pw->bcop", mh, x, mw, precision=_HIGHEST)
    raise ValueError(f"unknown layout {layout}")


def _hw(x: jax.Array, layout: str) -> tuple[int, int]:
    return (x.shape[1], x.shape[2]) if layout == "NHWC" else (x.shape[2], x.shape[3])


def area_resize(x: jax.Array, size: tuple[int, int], layout: str = "NHWC") -> jax.Array:
    """``F.interpolate(x, size, mode='area')`` on a 4-D array."""
    h, w = _hw(x, layout)
    if (h, w) == tuple(size):
        return x
    return _apply(x, area_matrix(h, size[0]), area_matrix(w, size[1]), layout)


def bilinear_resize(x: jax.Array, size: tuple[int, int], layout: str = "NHWC") -> jax.Array:
    """``F.interpolate(x, size, mode='bilinear'|'trilinear', align_corners=False)`` with t=1."""
    h, w = _hw(x, layout)
    if (h, w) == tuple(size):
        return x
    return _apply(x, bilinear_matrix(h, size[0]), bilinear_matrix(w, size[1]), layout)
