"""T5 v1.1 / Flan-T5 encoder in Flax NNX (the text conditioning of Infinity).

Architecture (encoder only), for token ids ``(B, L)``:

    x = embed[ids]                                   (no scaling)
    bias = rel_bias[bucket(k - q)]                   (H, L, L), computed once, shared by all layers
    per layer:  x += Attn(RMSNorm(x), bias, mask)    (no 1/sqrt(d) scaling, no biases)
                x += FFN(RMSNorm(x))                 (gated: act(x W0) * (x W1) W_o; or act(x W_i) W_o)
    out = RMSNorm(x)                                 (final layer norm)

RMSNorm is T5's: ``w * x / sqrt(mean(x^2) + eps)`` computed in float32, no mean subtraction, no
bias. ``feed_forward_proj='gated-gelu'`` uses the tanh approximation of GELU (what Hugging Face
calls ``gelu_new``), every other activation name is taken literally.

Precision: parameters are stored in ``param_dtype`` (float32); matmuls and attention inputs run
in ``dtype`` (e.g. bfloat16) with float32 accumulation; norms, softmax, the residual stream and
the output are float32.

The model of a local Hugging Face folder: :func:`load` (tensors and files: :mod:`.convert`, which
does not import this module; hyper-parameters: :mod:`.config`).

Parameter layout (logical axis names in brackets)::

    embed                  (vocab, d_model)            [vocab, text_embed]
    rel_bias               (buckets, heads)            [None, heads]
    blocks[i].attn.q/k/v   (d_model, heads, d_kv)      [text_embed, heads, kv]
    blocks[i].attn.o       (heads, d_kv, d_model)      [heads, kv, text_embed]
    blocks[i].ffn.wi_0/1   (d_model, d_ff)             [text_embed, mlp]   (wi when not gated)
    blocks[i].ffn.wo       (d_ff, d_model)             [mlp, text_embed]
    *norm*.scale           (d_model,)                  [norm]
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infinity_jax.sharding import constrain, param
from infinity_jax.text import convert
from infinity_jax.text.config import ACTIVATIONS, T5Config

DType = Any


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int = 32,
                              max_distance: int = 128, bidirectional: bool = True) -> np.ndarray:
    """Bucket of each (query, key) pair, ``(q_len, k_len)`` int32, as T5 (mesh-tensorflow) does.

    Computed on the host in float32 with the same operation order as the PyTorch reference, so the
    integer truncation at bucket edges agrees with it.
    """
    rel = np.arange(k_len, dtype=np.int64)[None, :] - np.arange(q_len, dtype=np.int64)[:, None]
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).astype(np.int64) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    with np.errstate(divide="ignore"):
        scaled = (np.log(np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact))
                  / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact))
    large = np.minimum(max_exact + scaled.astype(np.int64), num_buckets - 1)
    buckets += np.where(is_small, rel, large)
    return buckets.astype(np.int32)


class RMSNorm(nnx.Module):
    """T5 layer norm: scale only, no mean subtraction, statistics in float32."""

    def __init__(self, dim: int, eps: float = 1e-6, *, param_dtype: DType = jnp.float32):
        self.eps = eps
        self.scale = nnx.Param(param(nnx.initializers.ones, ("norm",))(jax.random.key(0), (dim,), param_dtype))

    def __call__(self, x: jax.Array, out_dtype: DType = jnp.float32) -> jax.Array:
        """x (..., C) -> (..., C) in ``out_dtype``."""
        x = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        y = x * jax.lax.rsqrt(var + self.eps)
        return (self.scale[...].astype(jnp.float32) * y).astype(out_dtype)


class Attention(nnx.Module):
    """Bidirectional multi-head self-attention without scaling or biases (T5)."""

    def __init__(self, cfg: T5Config, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs):
        d, h, k = cfg.d_model, cfg.num_heads, cfg.d_kv
        self.dtype = dtype
        normal = nnx.initializers.normal
        names_in = ("text_embed", "heads", "kv")
        # Mesh-TF style init (the 1/sqrt(d_kv) attention scale is folded into q).
        self.q = nnx.Param(param(normal((d * k) ** -0.5), names_in)(rngs.params(), (d, h, k), param_dtype))
        self.k = nnx.Param(param(normal(d ** -0.5), names_in)(rngs.params(), (d, h, k), param_dtype))
        self.v = nnx.Param(param(normal(d ** -0.5), names_in)(rngs.params(), (d, h, k), param_dtype))
        self.o = nnx.Param(param(normal((h * k) ** -0.5), ("heads", "kv", "text_embed"))(
            rngs.params(), (h, k, d), param_dtype))

    def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x (B, L, C), bias (H, L, L) float32, mask (B, L) bool or None -> (B, L, C) float32."""
        dt = self.dtype
        x = x.astype(dt)
        q = jnp.einsum("blc,chk->blhk", x, self.q[...].astype(dt))
        k = jnp.einsum("blc,chk->blhk", x, self.k[...].astype(dt))
        v = jnp.einsum("blc,chk->blhk", x, self.v[...].astype(dt))
        q = constrain(q, ("act_batch", "act_len", "act_heads", None))
        scores = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32)
        scores = scores + bias[None]
        if mask is not None:
            scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)
        out = jnp.einsum("bhqs,bshk->bqhk", probs, v)
        return jnp.einsum("blhk,hkc->blc", out, self.o[...].astype(dt), preferred_element_type=jnp.float32)


class FeedForward(nnx.Module):
    """T5 FFN: ``act(x Wi) Wo`` or gated ``(act(x Wi0) * x Wi1) Wo``."""

    def __init__(self, cfg: T5Config, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        self.dtype = dtype
        self.gated = cfg.is_gated
        self.act = cfg.activation
        normal = nnx.initializers.normal
        win = param(normal(d ** -0.5), ("text_embed", "mlp"))
        if self.gated:
            self.wi_0 = nnx.Param(win(rngs.params(), (d, f), param_dtype))
            self.wi_1 = nnx.Param(win(rngs.params(), (d, f), param_dtype))
        else:
            self.wi = nnx.Param(win(rngs.params(), (d, f), param_dtype))
        self.wo = nnx.Param(param(normal(f ** -0.5), ("mlp", "text_embed"))(rngs.params(), (f, d), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, L, C) -> (B, L, C) float32."""
        dt = self.dtype
        x = x.astype(dt)
        act = ACTIVATIONS[self.act]
        if self.gated:
            h = act(x @ self.wi_0[...].astype(dt)) * (x @ self.wi_1[...].astype(dt))
        else:
            h = act(x @ self.wi[...].astype(dt))
        h = constrain(h, ("act_batch", "act_len", "act_mlp"))
        return jnp.einsum("blf,fc->blc", h, self.wo[...].astype(dt), preferred_element_type=jnp.float32)


class Block(nnx.Module):
    """Pre-norm T5 encoder layer."""

    def __init__(self, cfg: T5Config, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs):
        self.dtype = dtype
        self.attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, param_dtype=param_dtype)
        self.attn = Attention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, param_dtype=param_dtype)
        self.ffn = FeedForward(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x (B, L, C) float32 -> (B, L, C) float32."""
        x = x + self.attn(self.attn_norm(x, self.dtype), bias, mask)
        x = x + self.ffn(self.ffn_norm(x, self.dtype))
        return constrain(x, ("act_batch", "act_len", "act_embed"))


class Model(nnx.Module):
    """T5 encoder: ids (B, L) [+ mask (B, L)] -> last hidden states (B, L, d_model) float32.

    Args:
      cfg: the :class:`T5Config`.
      dtype: compute dtype of matmuls (float32, bfloat16, float16).
      param_dtype: storage dtype of parameters.
      rngs: initialisation randomness (weights are normally loaded with :func:`load`).
    """

    def __init__(self, cfg: T5Config, *, dtype: DType = jnp.float32, param_dtype: DType = jnp.float32,
                 rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.cfg = cfg
        self.dtype = dtype
        self.embed = nnx.Param(param(nnx.initializers.normal(1.0), ("vocab", "text_embed"))(
            rngs.params(), (cfg.vocab_size, cfg.d_model), param_dtype))
        self.rel_bias = nnx.Param(param(nnx.initializers.normal(cfg.d_model ** -0.5), (None, "heads"))(
            rngs.params(), (cfg.relative_attention_num_buckets, cfg.num_heads), param_dtype))
        if cfg.absolute_positions:
            self.pos_embed = nnx.Param(param(nnx.initializers.normal(1.0), (None, "text_embed"))(
                rngs.params(), (cfg.absolute_positions, cfg.d_model), param_dtype))
        self.blocks = nnx.List([Block(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, param_dtype=param_dtype)

    def position_bias(self, length: int) -> jax.Array:
        """Shared relative position bias ``(heads, L, L)`` float32."""
        buckets = relative_position_buckets(length, length, self.cfg.relative_attention_num_buckets,
                                            self.cfg.relative_attention_max_distance)
        bias = jnp.take(self.rel_bias[...].astype(jnp.float32), jnp.asarray(buckets), axis=0)  # (L, L, H)
        return jnp.transpose(bias, (2, 0, 1))

    def __call__(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """ids (B, L) int, mask (B, L) bool/int (1 = token) or None -> (B, L, d_model) float32.

        Positions where ``mask`` is 0 are not attended to; their own outputs are meaningless.
        """
        if mask is not None:
            mask = mask.astype(bool)
        x = jnp.take(self.embed[...], ids, axis=0).astype(jnp.float32)
        if self.cfg.absolute_positions:
            if ids.shape[1] > self.cfg.absolute_positions:
                raise ValueError(f"{ids.shape[1]} tokens, but this encoder has position embeddings for "
                                 f"{self.cfg.absolute_positions}")
            x = x + self.pos_embed[...][: ids.shape[1]].astype(jnp.float32)
        x = constrain(x, ("act_batch", "act_len", "act_embed"))
        bias = self.position_bias(ids.shape[1])
        for block in self.blocks:
            x = block(x, bias, mask)
        return self.final_norm(x, jnp.float32)


def from_state_dict(state: Mapping[str, np.ndarray], cfg: T5Config, *, dtype: DType = jnp.float32,
                    param_dtype: DType = jnp.float32, what: str = "T5 checkpoint") -> Model:
    """A :class:`Model` holding Hugging Face encoder tensors, keys and shapes checked strictly.

    Raises:
      CheckpointMismatchError: naming every missing, unexpected and mis-shaped key.
    """
    abstract = nnx.eval_shape(lambda: Model(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
    return convert.load_params(abstract, state, param_dtype=param_dtype, what=what)


def load(folder: str | os.PathLike, *, dtype: DType = jnp.float32, param_dtype: DType = jnp.float32) -> Model:
    """A :class:`Model` with the weights of a local Hugging Face T5 folder (``T5EncoderModel`` or
    ``T5ForConditionalGeneration``; files and layout: :mod:`.convert`)."""
    cfg = convert.read_config(folder)
    state = convert.read_weights(folder)
    return from_state_dict(state, cfg, dtype=dtype, param_dtype=param_dtype,
                           what=f"T5 checkpoint {convert.find_weights(folder)}")
