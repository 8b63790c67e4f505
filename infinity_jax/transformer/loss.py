"""Bitwise cross-entropy, scale reweighting and accuracy metrics.

Logits (B, L, 2d) hold, for bit j, the two class logits at columns 2j (bit 0) and 2j+1
(bit 1). The per-token loss is the mean over bits of the 2-class cross-entropy.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from infinity_jax.schedules import scale_offsets


def scale_weights(scales: Sequence[Sequence[int]], reweight: bool = True) -> np.ndarray:
    """Per-token weights (L,) summing to 1.

    With ``reweight`` every token of scale k weighs sqrt(h_K w_K) / sqrt(h_k w_k) before
    normalisation, so scale k's total weight is proportional to sqrt(h_k w_k) (the official
    recipe with the tuple ``.prod()`` bug fixed as ``np.prod``). Otherwise uniform 1/L.
    """
    areas = [int(np.prod(s)) for s in scales]
    if not reweight:
        L = sum(areas)
        return np.full(L, 1.0 / L, np.float32)
    last = np.sqrt(areas[-1])
    w = np.concatenate([np.full(a, last / np.sqrt(a)) for a in areas])
    return (w / w.sum()).astype(np.float32)


def bit_logits(logits: jax.Array) -> jax.Array:
    """(B, L, 2d) -> (B, L, d, 2)."""
    return logits.reshape(*logits.shape[:-1], -1, 2)


def bit_cross_entropy(logits: jax.Array, bits: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-token loss (B, L): mean over the d bits of the 2-class cross-entropy."""
    lg = bit_logits(logits.astype(jnp.float32))
    logp = jax.nn.log_softmax(lg, axis=-1)
    onehot = jax.nn.one_hot(bits, 2, dtype=jnp.float32)
    if label_smoothing:
        onehot = onehot * (1 - label_smoothing) + label_smoothing / 2
    return -jnp.mean(jnp.sum(onehot * logp, axis=-1), axis=-1)


def predicted_bits(logits: jax.Array) -> jax.Array:
    """Greedy bits (B, L, d): class 1 only where its logit is strictly larger (ties -> 0)."""
    lg = bit_logits(logits)
    return (lg[..., 1] > lg[..., 0]).astype(jnp.int32)


class LossOutput(NamedTuple):
    """loss (scalar, the training objective); loss_per_token (B, L); loss_mean_uniform,
    loss_mean_scale_reweighted, bit_accuracy, token_accuracy (scalars); per_scale_loss,
    per_scale_bit_accuracy (K,)."""

    loss: jax.Array
    loss_per_token: jax.Array
    loss_mean_uniform: jax.Array
    loss_mean_scale_reweighted: jax.Array
    bit_accuracy: jax.Array
    token_accuracy: jax.Array
    per_scale_loss: jax.Array
    per_scale_bit_accuracy: jax.Array


def infinity_loss(logits: jax.Array, bits: jax.Array, scales: Sequence[Sequence[int]], *,
                  reweight: bool = True, label_smoothing: float = 0.0) -> LossOutput:
    """All losses and metrics for ``logits (B,L,2d)`` against ``bits (B,L,d)``."""
    lpt = bit_cross_entropy(logits, bits, label_smoothing)
    w_re = jnp.asarray(scale_weights(scales, True))
    w_un = jnp.asarray(scale_weights(scales, False))
    l_re = jnp.mean(jnp.sum(lpt * w_re, axis=-1))
    l_un = jnp.mean(jnp.sum(lpt * w_un, axis=-1))
    correct = (predicted_bits(logits) == bits).astype(jnp.float32)
    bit_acc_tok = jnp.mean(correct, axis=-1)  # (B, L)
    offs = scale_offsets(scales)
    seg = np.concatenate([np.full(offs[i + 1] - offs[i], i) for i in range(len(scales))])
    seg = jnp.asarray(seg)
    K = len(scales)
    counts = jnp.asarray(np.diff(offs), jnp.float32) * lpt.shape[0]
    per_loss = jax.ops.segment_sum(jnp.sum(lpt, 0), seg, K) / counts
    per_acc = jax.ops.segment_sum(jnp.sum(bit_acc_tok, 0), seg, K) / counts
    return LossOutput(
        loss=l_re if reweight else l_un,
        loss_per_token=lpt,
        loss_mean_uniform=l_un,
        loss_mean_scale_reweighted=l_re,
        bit_accuracy=jnp.mean(bit_acc_tok),
        token_accuracy=jnp.mean(jnp.all(correct > 0, axis=-1).astype(jnp.float32)),
        per_scale_loss=per_loss,
        per_scale_bit_accuracy=per_acc,
    )
