"""2-D rotary position embedding over a multi-scale token sequence.

Positions of a token at (y, x) on a scale grid (h, w) are mapped onto the template's final
1M grid (uph, upw): row = round(y * uph / h), col = round(x * upw / w) (half to even). The
head dimension is split into head_dim/2 rotation pairs (interleaved, GPT-J style): the first
head_dim/4 pairs rotate by row angles, the rest by column angles, with inverse frequencies
``10000 ** (-2j / (head_dim/2))``.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from infinity_jax.schedules import rope_grid_for


@functools.lru_cache(maxsize=64)
def _rope_table(head_dim: int, scales: tuple, base: float = 10000.0) -> np.ndarray:
    half = head_dim // 2
    inv_freq = (1.0 / (np.float32(base) ** (np.arange(0, half, 2, dtype=np.float32) / np.float32(half)))).astype(np.float32)
    uph, upw = rope_grid_for(scales)
    rows, cols = [], []
    for _, h, w in scales:
        ys = np.round(np.arange(h, dtype=np.float32) * np.float32(uph / h)).astype(np.int64)
        xs = np.round(np.arange(w, dtype=np.float32) * np.float32(upw / w)).astype(np.int64)
        rows.append(np.repeat(ys, w))
        cols.append(np.tile(xs, h))
    rows = np.concatenate(rows).astype(np.float32)
    cols = np.concatenate(cols).astype(np.float32)
    ang = np.concatenate([np.outer(rows, inv_freq), np.outer(cols, inv_freq)], axis=-1).astype(np.float32)
    return np.stack([np.cos(ang), np.sin(ang)]).astype(np.float32)  # (2, L, half)


def rope_cos_sin(head_dim: int, scales: Sequence[Sequence[int]]) -> np.ndarray:
    """(2, L, head_dim/2) cos and sin for every token of the schedule (host constant)."""
    return _rope_table(head_dim, tuple(tuple(int(v) for v in s) for s in scales))


def apply_rope(x: jax.Array, cos_sin: jax.Array) -> jax.Array:
    """Rotate interleaved pairs of ``x (B, L, H, hd)`` by ``cos_sin (2, L, hd/2)``."""
    cos, sin = cos_sin[0][None, :, None, :], cos_sin[1][None, :, None, :]
    xr = x.reshape(*x.shape[:-1], -1, 2).astype(jnp.float32)
    a, b = xr[..., 0], xr[..., 1]
    out = jnp.stack([cos * a - sin * b, sin * a + cos * b], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)
