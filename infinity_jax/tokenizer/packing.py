"""Spatial patchify (the official 8B layout): 2x2 tokenizer tokens packed into one transformer token.

The packing is the official ``pixel_unshuffle(x, 2)`` in channels-last form: channel ``c*4 + 2i + j``
of a packed token holds channel c of the tokenizer token at row offset i, column offset j. It
works on bits (int) and codes (float) alike. The grid maps that go with it are
:func:`infinity_jax.schedules.tokenizer_schedule` and its inverse.
"""
from __future__ import annotations

import jax

from infinity_jax.schedules import PATCHIFY_FACTOR

_R = PATCHIFY_FACTOR


def patchify(x: jax.Array) -> jax.Array:
    """Pixel-unshuffle by 2: ``(B, 2h, 2w, C) -> (B, h, w, 4C)``, channel ``c*4 + 2i + j``."""
    B, H, W, C = x.shape
    if H % _R or W % _R:
        raise ValueError(f"patchify needs an even grid, got {H}x{W}")
    x = x.reshape(B, H // _R, _R, W // _R, _R, C)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(B, H // _R, W // _R, _R * _R * C)


def unpatchify(x: jax.Array) -> jax.Array:
    """Inverse of :func:`patchify` (pixel-shuffle by 2): ``(B, h, w, 4C) -> (B, 2h, 2w, C)``."""
    B, h, w, C4 = x.shape
    if C4 % (_R * _R):
        raise ValueError(f"unpatchify needs a channel count divisible by {_R * _R}, got {C4}")
    C = C4 // (_R * _R)
    x = x.reshape(B, h, w, C, _R, _R)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(B, _R * h, _R * w, C)
