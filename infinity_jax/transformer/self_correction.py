"""Bitwise Self-Correction (BSC): build teacher-forcing inputs and labels with flipped bits.

For scales k = 0..K-1 with running code sum S (full latent grid, starts at 0)::

    r_k = area(F - S -> h_k x w_k)               (no resize at the last scale)
    bits_k = BSQ(r_k)                             label of scale k (clean w.r.t. the corrupted S)
    if k < apply_layers: p_bk ~ U{0, .01, ..., strength} (one draw per sample b and scale k)
                         flip each bit of sample b with prob p_bk; q_k = codes(flipped bits)  (requant)
    S += bilinear(q_k -> H x W)
    input of scale k+1 = bilinear(S -> h_{k+1} x w_{k+1})

So the input of scale k+1 carries the corrupted codes of scales <= k, and later labels point
back towards the true latent: the model learns to correct its own earlier mistakes. (The official
trainer draws one strength per scale for each rank's local batch; a draw per sample is that
recipe's limit of one sample per rank, and it does not depend on how the batch is sharded.)
With spatial patchify (8B) the VAE grid is twice the token grid and 2x2 tokenizer tokens are
packed per transformer token (channel c*4 + 2i + j): ``schedules.tokenizer_schedule`` and
``tokenizer.packing.patchify``.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from infinity_jax.schedules import tokenizer_schedule
from infinity_jax.tokenizer.packing import patchify as pack
from infinity_jax.tokenizer.quantizer import bits_to_codes, bsq
from infinity_jax.tokenizer.resample import area_resize, bilinear_resize


class BSCOutput(NamedTuple):
    """x_BLC_wo_prefix (B, L-1, d'): inputs of scales 1..K-1; labels (B, L, d') int32: bits to
    predict; clean_bits / used_bits: per scale (B, h, w, d) on the VAE grid, before / after
    flipping; strengths (B, K) the flip probability drawn per sample and scale."""

    x_BLC_wo_prefix: jax.Array
    labels: jax.Array
    clean_bits: list
    used_bits: list
    strengths: jax.Array


def flip_requant(features: jax.Array, scales: Sequence[Sequence[int]], key: jax.Array | None = None, *,
                 strength: float = 0.0, apply_layers: int = 100, requant: bool = True,
                 patchify: bool = False, strengths: Sequence[float] | jax.Array | None = None) -> BSCOutput:
    """Teacher-forcing inputs and labels from raw tokenizer features ``(B, H, W, d)``.

    Args:
      features: encoder output on the tokenizer grid (last scale of ``schedules.tokenizer_schedule``).
      scales: the transformer's schedule ((1,h,w), ...).
      key: PRNG key for the flips; None (or strength 0) means no flipping.
      strength: maximum flip probability (official training: 0.3; validation: 0.2).
      apply_layers: flip only on the first ``apply_layers`` scales.
      strengths: explicit flip probabilities, per scale (K,) or per sample and scale (B, K),
        overriding the random draw.
      requant: feed the flipped codes forward (official default); with False the clean codes are
        used and the flips are only recorded in ``used_bits``.
    """
    vs = tokenizer_schedule(scales, patchify)
    B, H, W, d = features.shape
    if (vs[-1][1], vs[-1][2]) != (H, W):
        raise ValueError(f"features grid {(H, W)} does not match the schedule's last grid {vs[-1][1:]}")
    x = features.astype(jnp.float32)
    S = jnp.zeros_like(x)
    K = len(vs)
    flipping = key is not None and (strength > 0 or strengths is not None)
    if flipping and strengths is not None:
        strengths = jnp.broadcast_to(jnp.asarray(strengths, jnp.float32), (B, K))
        flip_keys = jax.random.split(key, K)
    elif flipping:
        kstr, kflip = jax.random.split(key)
        n = int(round(100 * strength)) + 1
        strengths = jax.random.randint(kstr, (B, K), 0, n).astype(jnp.float32) * 0.01
        strengths = jnp.where(jnp.arange(K)[None] < apply_layers, strengths, 0.0)
        flip_keys = jax.random.split(kflip, K)
    else:
        strengths = jnp.zeros((B, K), jnp.float32)
    inputs, labels, clean, used = [], [], [], []
    for k, (_, h, w) in enumerate(vs):
        r = x - S
        if k != K - 1:
            r = area_resize(r, (h, w))
        q, bits = bsq(r)
        clean.append(bits)
        if flipping and k < apply_layers:
            flip = jax.random.uniform(flip_keys[k], bits.shape) < strengths[:, k, None, None, None]
            fbits = jnp.where(flip, 1 - bits, bits)
            if requant:
                q = bits_to_codes(fbits)
        else:
            fbits = bits
        used.append(fbits)
        S = S + bilinear_resize(q, (H, W))
        if k < K - 1:
            nxt = bilinear_resize(S, vs[k + 1][1:])
            if patchify:
                nxt = pack(nxt)
            inputs.append(nxt.reshape(B, -1, nxt.shape[-1]))
        lab = pack(bits) if patchify else bits
        labels.append(lab.reshape(B, -1, lab.shape[-1]))
    return BSCOutput(jnp.concatenate(inputs, axis=1), jnp.concatenate(labels, axis=1), clean, used, strengths)


def truncate_scales(out: BSCOutput, scales: Sequence[Sequence[int]], n: int):
    """The official ``always_training_scales``: train on the first ``n`` scales only.

    BSC runs on the whole schedule; the inputs ``(B, L_n - 1, d')``, labels ``(B, L_n, d')`` and
    the schedule are cut to the first ``n`` scales (``L_n`` tokens). Returns (x, labels, scales[:n]).
    """
    scales = tuple(tuple(s) for s in scales)
    n = max(1, min(int(n), len(scales)))
    L = sum(int(s[-2]) * int(s[-1]) * (int(s[0]) if len(s) == 3 else 1) for s in scales[:n])
    return out.x_BLC_wo_prefix[:, : L - 1], out.labels[:, :L], scales[:n]
