"""Pixels <-> the tokenizer's range: uint8 ``[0, 255]`` images and float32 ``[-1, 1]`` images.

Both directions as the official code computes them: ``x / 127.5 - 1`` into the tokenizer
(``normalize_01_into_pm1`` of ``x / 255``), ``(x + 1) / 2 * 255`` truncated to uint8 out of it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def from_uint8(images) -> jax.Array:
    """uint8 ``(..., H, W, 3)`` in [0, 255] -> float32 in [-1, 1] (a jax array; jit-able)."""
    return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images) -> np.ndarray:
    """``(..., H, W, 3)`` in [-1, 1] -> uint8 on the host: clipped, ``(x + 1) / 2 * 255``, truncated."""
    x = (np.clip(np.asarray(images, np.float32), -1, 1) + 1) / 2 * 255
    return x.astype(np.uint8)


__all__ = ["from_uint8", "to_uint8"]
