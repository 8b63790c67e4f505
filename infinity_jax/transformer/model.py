"""The Infinity scale-autoregressive transformer in Flax NNX.

Shapes: B batch, L tokens over the whole schedule (sum of h*w, scale 0 = the start token),
C model width, T text tokens (padded), Ct text width (T5), d bits per token, V = 2d logits.

Data flow (teacher forcing)::

    text (B,T,Ct), mask (B,T) --text_norm--> pool (attention, one learned query) -> cond (B,C)
                                         \--> MLP -> cross-attention memory (B,T,C)
    cond --SiLU,Linear--> shared AdaLN (B,1,6,C) (+ per-block ada_gss)
    tokens = [cond + pos_start] ++ word_embed(x_BLC_wo_prefix)  (B,L,C), + lvl_embed[scale]
    blocks: x += SA(LN(x)(1+s1)+b1)*g1 ; x += CA(LN_affine(x), text) ; x += FFN(LN(x)(1+s2)+b2)*g2
    head: LN(x)(1+s)+b -> Linear -> logits (B,L,2d), bit j's classes at columns 2j, 2j+1
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infinity_jax.schedules import scale_offsets
from infinity_jax.sharding import constrain, gather_weight, param
from infinity_jax.transformer import attention as attn
from infinity_jax.transformer.config import InfinityConfig
from infinity_jax.transformer.rope import apply_rope, rope_cos_sin

_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()


def _trunc_normal(std: float, mult: float = 1.0):
    """PyTorch's ``trunc_normal_(std=std)`` (cut at +-2 absolute), then ``mul_(mult)``."""
    if std <= 0 or mult == 0:
        return _zeros
    base = nnx.initializers.truncated_normal(stddev=std, lower=-2.0 / std, upper=2.0 / std)
    return base if mult == 1 else (lambda key, shape, dtype=jnp.float32: base(key, shape, dtype) * mult)


def _ada_gss_init(C: int, gamma_mult: float, mult: float):
    """``randn(1, 1, 6, C) / sqrt(C)``, gamma channels (0, 1) x ``gamma_mult``, scale/shift x ``mult``."""
    m = jnp.asarray([gamma_mult] * 2 + [mult] * 4, jnp.float32).reshape(1, 1, 6, 1)

    def init(key, shape, dtype=jnp.float32):
        return (jax.random.normal(key, shape, dtype) / math.sqrt(C) * m).astype(dtype)

    return init


class Linear(nnx.Module):
    """``y = x @ kernel (+ bias)`` with logical axis names on the kernel (in_axis, out_axis)."""

    def __init__(self, din: int, dout: int, axes: tuple, *, bias: bool = True, std: float, mult: float = 1.0,
                 rngs: nnx.Rngs):
        self.axes = tuple(axes)
        self.kernel = nnx.Param(param(_trunc_normal(std, mult), axes)(rngs.params(), (din, dout), jnp.float32))
        self.bias = nnx.Param(param(_zeros, axes[-1:])(rngs.params(), (dout,), jnp.float32)) if bias else None

    def __call__(self, x: jax.Array, dtype=None) -> jax.Array:
        dtype = dtype or x.dtype
        y = jnp.dot(x.astype(dtype), gather_weight(self.kernel[...].astype(dtype), self.axes))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class FusedLinear(nnx.Module):
    """``n`` projections in one matmul, kept apart in the kernel (din, n, dout): tensor parallelism
    splits every projection's heads, never the boundary between q|k|v (or k|v).

    x (..., din) -> (..., n, dout).
    """

    def __init__(self, din: int, n: int, dout: int, axes: tuple, *, std: float, rngs: nnx.Rngs):
        self.axes = tuple(axes)
        self.kernel = nnx.Param(param(_trunc_normal(std), axes)(rngs.params(), (din, n, dout), jnp.float32))

    def __call__(self, x: jax.Array, dtype=None) -> jax.Array:
        dtype = dtype or x.dtype
        w = gather_weight(self.kernel[...].astype(dtype), self.axes)
        return jnp.einsum("...c,cnd->...nd", x.astype(dtype), w)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """Non-affine LayerNorm in float32."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps) * weight


def l2norm(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True)), eps)


def _materialized(g: jax.Array) -> jax.Array:
    # An identity XLA:CPU cannot fuse through: a conditional's operand is always a buffer.
    return jax.lax.cond(jnp.isfinite(g.reshape(-1)[0]), lambda t: t, lambda t: t + 0, g)


@jax.custom_vjp
def residual_boundary(x: jax.Array) -> jax.Array:
    """Identity on the residual stream (B,L,C) whose cotangent is materialised on the CPU.

    Without it XLA:CPU fuses the backward's residual-gradient sum through every later block into
    each consumer and recomputes it there: time quadratic in depth (layer12: 6 of 15 s per step,
    see benchmarks/README.md). Other backends (and scanned blocks) keep the plain identity.
    """
    return x


def _boundary_fwd(x):
    return x, None


def _boundary_bwd(_, g):
    return (jax.lax.platform_dependent(g, cpu=_materialized, default=lambda t: t),)


residual_boundary.defvjp(_boundary_fwd, _boundary_bwd)


def remat_policy(name: str):
    """What a rematerialised block keeps for its backward pass.

    ``full``: nothing (everything is recomputed); ``dots``: the outputs of matmuls against weights
    (no batch dimensions), never attention logits or probabilities.
    """
    policies = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
    if name not in policies:
        raise ValueError(f"unknown remat_policy {name!r}; choose one of {', '.join(policies)}")
    return policies[name]


class TextCondition(NamedTuple):
    """Everything derived from the caption once per image.

    cond (B,C) pooled text vector; ada (B,1,6,C) shared AdaLN; ca_kv (B,T,C) cross-attention
    memory; text_mask (B,T) bool.
    """

    cond: jax.Array
    ada: jax.Array
    ca_kv: jax.Array
    text_mask: jax.Array


class TextPool(nnx.Module):
    """Attention pooling of the caption with one learned query (``text_proj_for_sos``)."""

    def __init__(self, cfg: InfinityConfig, *, rngs: nnx.Rngs):
        C, Ct, H = cfg.embed_dim, cfg.text_channels, cfg.pool_heads
        self.num_heads, self.head_dim = H, C // H
        self.impl = cfg.attention_impl
        std = cfg.init_linear_std
        self.mat_q = nnx.Param(param(_trunc_normal(math.sqrt(1 / C / 3)), (None, "heads", "kv"))(
            rngs.params(), (1, H, C // H), jnp.float32))
        self.mat_kv = Linear(Ct, 2 * C, ("text_embed", "embed"), bias=False, std=std, rngs=rngs)
        self.v_bias = nnx.Param(param(_zeros, ("embed",))(rngs.params(), (C,), jnp.float32))
        self.proj = Linear(C, C, ("embed", "embed"), std=std, rngs=rngs)

    def __call__(self, text: jax.Array, mask: jax.Array) -> jax.Array:
        B, T, _ = text.shape
        H, hd = self.num_heads, self.head_dim
        kv = self.mat_kv(text.astype(jnp.float32))
        kv = kv + jnp.concatenate([jnp.zeros_like(self.v_bias[...]), self.v_bias[...]])
        kv = kv.reshape(B, T, 2, H, hd)
        q = jnp.broadcast_to(self.mat_q[...][None], (B, 1, H, hd))
        out = attn.prefix_attention(q, kv[:, :, 0], kv[:, :, 1], mask, scale=1 / math.sqrt(hd), impl=self.impl)
        return self.proj(out.reshape(B, H * hd))


class SelfAttention(nnx.Module):
    """Cosine self-attention with per-head learned temperature and 2-D RoPE."""

    def __init__(self, cfg: InfinityConfig, *, rngs: nnx.Rngs):
        C, H = cfg.embed_dim, cfg.num_heads
        std = cfg.init_linear_std
        self.num_heads, self.head_dim = H, C // H
        self.impl, self.q_chunk = cfg.attention_impl, cfg.attention_q_chunk
        self.mat_qkv = FusedLinear(C, 3, C, ("embed", "qkv", "heads"), std=std, rngs=rngs)
        self.q_bias = nnx.Param(param(_zeros, ("heads",))(rngs.params(), (C,), jnp.float32))
        self.v_bias = nnx.Param(param(_zeros, ("heads",))(rngs.params(), (C,), jnp.float32))
        self.scale_mul = nnx.Param(param(nnx.initializers.constant(math.log(4.0)), ("heads",))(rngs.params(), (H,), jnp.float32))
        self.proj = Linear(C, C, ("heads", "embed"), std=std, mult=residual_proj_mult(cfg), rngs=rngs)

    def qkv(self, x: jax.Array, cos_sin: jax.Array, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Normalised, temperature-scaled, rotated q, k and plain v, each (B,L,H,hd)."""
        B, L, C = x.shape
        bias = jnp.stack([self.q_bias[...], jnp.zeros_like(self.q_bias[...]), self.v_bias[...]])
        qkv = (self.mat_qkv(x, dtype) + bias.astype(dtype)).reshape(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        temp = jnp.exp(jnp.minimum(self.scale_mul[...], math.log(100.0)))
        q = l2norm(q.astype(jnp.float32)) * temp[None, None, :, None]
        k = l2norm(k.astype(jnp.float32))
        q, k = apply_rope(q, cos_sin), apply_rope(k, cos_sin)
        names = ("act_batch", "act_len", "act_heads", "act_kv")
        return constrain(q, names), constrain(k, names), constrain(v, names)

    def __call__(self, x, cos_sin, offsets, dtype, kv_cache=None):
        """x (B,l,C). Training: ``offsets`` = the schedule's scale starts + L (block-causal over x).
        Sampling: ``kv_cache(k, v)`` stores this scale's keys/values and returns the visible prefix."""
        B, L, C = x.shape
        q, k, v = self.qkv(x, cos_sin, dtype)
        if kv_cache is not None:
            k, v = kv_cache(k, v)
            out = attn.prefix_attention(q, k, v, impl=self.impl, q_chunk=self.q_chunk)
        else:
            out = attn.block_causal_attention(q, k, v, offsets, impl=self.impl, q_chunk=self.q_chunk)
        return self.proj(out.reshape(B, L, C).astype(dtype), dtype)


class CrossAttention(nnx.Module):
    """Image tokens attend to the caption's valid tokens (scale 1/sqrt(hd))."""

    def __init__(self, cfg: InfinityConfig, *, rngs: nnx.Rngs):
        C, H = cfg.embed_dim, cfg.num_heads
        std = cfg.init_linear_std
        self.num_heads, self.head_dim = H, C // H
        self.impl, self.q_chunk = cfg.attention_impl, cfg.attention_q_chunk
        self.mat_q = Linear(C, C, ("embed", "heads"), std=std, rngs=rngs)
        self.mat_kv = FusedLinear(C, 2, C, ("embed", "qkv", "heads"), std=std, rngs=rngs)
        self.v_bias = nnx.Param(param(_zeros, ("heads",))(rngs.params(), (C,), jnp.float32))
        self.proj = Linear(C, C, ("heads", "embed"), std=std, mult=residual_proj_mult(cfg), rngs=rngs)

    def __call__(self, x, ca_kv, text_mask, dtype):
        B, L, C = x.shape
        T = ca_kv.shape[1]
        H, hd = self.num_heads, self.head_dim
        q = self.mat_q(x, dtype).reshape(B, L, H, hd)
        kv = self.mat_kv(ca_kv, dtype) + jnp.stack([jnp.zeros_like(self.v_bias[...]), self.v_bias[...]]).astype(dtype)
        kv = kv.reshape(B, T, 2, H, hd)
        out = attn.prefix_attention(q, kv[:, :, 0], kv[:, :, 1], text_mask, scale=1 / math.sqrt(hd),
                                    impl=self.impl, q_chunk=self.q_chunk)
        return self.proj(out.reshape(B, L, C).astype(dtype), dtype)


class FFN(nnx.Module):
    def __init__(self, cfg: InfinityConfig, *, rngs: nnx.Rngs):
        C, M = cfg.embed_dim, cfg.mlp_hidden
        std = cfg.init_linear_std
        self.fc1 = Linear(C, M, ("embed", "mlp"), std=std, rngs=rngs)
        self.fc2 = Linear(M, C, ("mlp", "embed"), std=std, mult=residual_proj_mult(cfg), rngs=rngs)

    def __call__(self, x, dtype):
        h = constrain(jax.nn.gelu(self.fc1(x, dtype), approximate=True), ("act_batch", "act_len", "act_mlp"))
        return self.fc2(h, dtype)


class Block(nnx.Module):
    """One cross-attention transformer block with shared AdaLN."""

    def __init__(self, cfg: InfinityConfig, *, rngs: nnx.Rngs):
        C = cfg.embed_dim
        self.eps = cfg.norm_eps
        self.ada_gss = nnx.Param(param(_ada_gss_init(C, cfg.init_gamma_mult, cfg.init_aln),
                                       (None, None, "adaln", "embed"))(rngs.params(), (1, 1, 6, C), jnp.float32))
        self.sa = SelfAttention(cfg, rngs=rngs)
        self.ca = CrossAttention(cfg, rngs=rngs)
        self.ffn = FFN(cfg, rngs=rngs)
        self.ca_norm_scale = nnx.Param(param(_ones, ("norm",))(rngs.params(), (C,), jnp.float32))
        self.ca_norm_bias = nnx.Param(param(_zeros, ("norm",))(rngs.params(), (C,), jnp.float32))

    def __call__(self, x, ada, ca_kv, text_mask, cos_sin, offsets, *, dtype=jnp.float32, kv_cache=None,
                 drop_path=None):
        """x (B,L,C) float32 residual stream; ada (B,1,6,C); offsets: see :meth:`SelfAttention.__call__`.
        Returns the new residual stream."""
        x = constrain(x, ("act_batch", "act_len", "act_embed"))
        g1, g2, s1, s2, b1, b2 = [t[:, :, 0] for t in jnp.split(self.ada_gss[...] + ada, 6, axis=2)]
        keep1 = keep2 = 1.0
        if drop_path is not None:
            keep1, keep2 = drop_path
        h = layer_norm(x, self.eps) * (1 + s1) + b1
        x = x + self.sa(h.astype(dtype), cos_sin, offsets, dtype, kv_cache).astype(jnp.float32) * g1 * keep1
        h = layer_norm(x, self.eps) * self.ca_norm_scale[...] + self.ca_norm_bias[...]
        x = x + self.ca(h.astype(dtype), ca_kv, text_mask, dtype).astype(jnp.float32)
        h = layer_norm(x, self.eps) * (1 + s2) + b2
        x = x + self.ffn(h.astype(dtype), dtype).astype(jnp.float32) * g2 * keep2
        return constrain(x, ("act_batch", "act_len", "act_embed"))


def residual_proj_mult(cfg: InfinityConfig) -> float:
    """``--diva``: 1/sqrt(2 depth) on the residual projections (sa.proj, ca.proj, ffn.fc2), or 1."""
    return 1 / math.sqrt(2 * cfg.depth) if cfg.init_proj_scale == 1 else 1.0


def scale_ids(scales: Sequence[Sequence[int]]) -> np.ndarray:
    return np.concatenate([np.full(s[-2] * s[-1], i, np.int32) for i, s in enumerate(scales)])


class Infinity(nnx.Module):
    """The Infinity transformer. See the module docstring for the data flow."""

    def __init__(self, cfg: InfinityConfig, *, rngs: nnx.Rngs):
        """A fresh model with the official initialisation (``init_weights`` + ``special_init``), tini =
        ``cfg.init_linear_std``: every Linear weight and ``lvl_embed`` ~ N(0, tini) (cut at +-2), biases
        0, norm scales 1; ``head_ada_lin`` x init_aln; ``head`` x init_head; ``sa.proj``, ``ca.proj``,
        ``ffn.fc2`` x 1/sqrt(2 depth) (init_proj_scale=1); ``ada_gss`` ~ N(0, 1/C) with gamma channels
        x init_aln_gamma and scale/shift x init_aln; ``pos_start`` and the text pool's query
        ~ N(0, 1/(3C)); ``cfg_uncond`` ~ N(0, 1.2) cut at +-2, / sqrt(Ct); ``scale_mul`` log 4."""
        cfg = cfg.validate()
        self.cfg = cfg
        C, Ct, d = cfg.embed_dim, cfg.text_channels, cfg.token_bits
        std = cfg.init_linear_std
        self.cfg_uncond = nnx.Param(param(nnx.initializers.truncated_normal(1.2 / math.sqrt(Ct), lower=-2 / 1.2, upper=2 / 1.2),
                                          ("text_len", "text_embed"))(rngs.params(), (cfg.text_maxlen, Ct), jnp.float32))
        self.pos_start = nnx.Param(param(_trunc_normal(math.sqrt(1 / C / 3)), (None, None, "embed"))(
            rngs.params(), (1, 1, C), jnp.float32))
        self.text_norm_scale = nnx.Param(param(_ones, ("text_embed",))(rngs.params(), (Ct,), jnp.float32))
        self.text_pool = TextPool(cfg, rngs=rngs)
        self.text_proj1 = Linear(Ct, C, ("text_embed", "embed"), std=std, rngs=rngs)
        self.text_proj2 = Linear(C, C, ("embed", "embed"), std=std, rngs=rngs)
        self.lvl_embed = nnx.Param(param(_trunc_normal(std), ("levels", "embed"))(rngs.params(), (cfg.num_levels, C), jnp.float32))
        self.word_embed = Linear(d, C, ("bits", "embed"), std=std, rngs=rngs)
        self.shared_ada_lin = Linear(C, 6 * C, ("embed", "adaln"), std=std, rngs=rngs)
        self.head_ada_lin = Linear(C, 2 * C, ("embed", "adaln"), std=std, mult=cfg.init_aln, rngs=rngs)
        self.head = Linear(C, cfg.vocab, ("embed", "vocab"), std=std,
                           mult=cfg.init_head if cfg.init_head >= 0 else 1.0, rngs=rngs)
        if cfg.scan_blocks:
            @nnx.split_rngs(splits=cfg.depth)
            @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make(r):
                return Block(cfg, rngs=r)

            self.blocks = make(rngs)
        else:
            self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])

    # ------------------------------------------------------------------ text
    def text_condition(self, text: jax.Array, text_mask: jax.Array, *, return_intermediates: bool = False):
        """Caption features (B,T,Ct) and mask (B,T) -> :class:`TextCondition`."""
        cfg = self.cfg
        text_mask = text_mask.astype(bool)
        t = rms_norm(text, self.text_norm_scale[...], cfg.norm_eps)
        cond = self.text_pool(t, text_mask)
        ca_kv = self.text_proj2(jax.nn.gelu(self.text_proj1(t), approximate=True))
        ada = self.shared_ada_lin(jax.nn.silu(cond)).reshape(-1, 1, 6, cfg.embed_dim)
        tc = TextCondition(cond, ada, ca_kv, text_mask)
        if return_intermediates:
            return tc, {"text_norm_out": t}
        return tc

    def null_text(self, text_mask: jax.Array) -> jax.Array:
        """The learned null condition ``cfg_uncond[:len]`` laid out like a padded caption (B,T,Ct)."""
        B, T = text_mask.shape
        if T > self.cfg.text_maxlen:
            raise ValueError(f"caption length {T} exceeds text_maxlen {self.cfg.text_maxlen}")
        u = self.cfg_uncond[...][:T][None]
        return jnp.where(text_mask[..., None].astype(bool), u, 0.0) * jnp.ones((B, 1, 1), u.dtype)

    # ------------------------------------------------------------------ pieces
    def embed_scale_inputs(self, x: jax.Array) -> jax.Array:
        """Word embedding of d-channel scale inputs (B,l,d) -> (B,l,C), float32."""
        return self.word_embed(x.astype(jnp.float32))

    def start_tokens(self, cond: jax.Array) -> jax.Array:
        return cond[:, None, :] + self.pos_start[...]

    def logits(self, h: jax.Array, cond: jax.Array) -> jax.Array:
        """AdaLN head in float32: (B,l,C) -> (B,l,2d)."""
        h = h.astype(jnp.float32)
        scale, shift = jnp.split(self.head_ada_lin(jax.nn.silu(cond.astype(jnp.float32))).reshape(-1, 1, 2, self.cfg.embed_dim), 2, axis=2)
        hn = layer_norm(h, self.cfg.norm_eps) * (1 + scale[:, :, 0]) + shift[:, :, 0]
        return self.head(hn), hn

    def run_blocks(self, x, tc: TextCondition, cos_sin, offsets, *, collect: bool = False, rng=None,
                   deterministic: bool = True):
        """Apply all blocks. Returns (x, [per-block outputs] if collect)."""
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        rates = np.linspace(0, cfg.drop_path_rate, cfg.depth) if cfg.depth > 1 else np.zeros(1)
        use_dp = (not deterministic) and cfg.drop_path_rate > 0 and rng is not None

        def keep(i, key):
            if not use_dp:
                return None
            r = jnp.asarray(rates)[i]
            k1, k2 = jax.random.split(key)
            B = x.shape[0]
            draw = lambda k: (jax.random.uniform(k, (B, 1, 1)) >= r).astype(jnp.float32) / jnp.maximum(1 - r, 1e-6)
            return draw(k1), draw(k2)

        keys = jax.random.split(rng, cfg.depth) if use_dp else [None] * cfg.depth
        if cfg.scan_blocks:
            graphdef, state = nnx.split(self.blocks)

            def body(carry, inp):
                st, i, key = inp
                blk = nnx.merge(graphdef, st)
                out = blk(carry, tc.ada, tc.ca_kv, tc.text_mask, cos_sin, offsets, dtype=dtype,
                          drop_path=keep(i, key) if use_dp else None)
                return out, (out if collect else None)

            if cfg.remat:
                body = jax.checkpoint(body, prevent_cse=False, policy=remat_policy(cfg.remat_policy))
            xs = (state, jnp.arange(cfg.depth), keys if use_dp else jnp.zeros((cfg.depth, 2), jnp.uint32))
            x, outs = jax.lax.scan(body, x, xs)
            return x, ([outs[i] for i in range(cfg.depth)] if collect else [])
        outs = []
        for i, blk in enumerate(self.blocks):
            def fn(b, h, dp):
                return b(h, tc.ada, tc.ca_kv, tc.text_mask, cos_sin, offsets, dtype=dtype, drop_path=dp)

            if cfg.remat:
                fn = nnx.remat(fn, prevent_cse=False, policy=remat_policy(cfg.remat_policy))
            x = fn(blk, residual_boundary(x) if i else x, keep(i, keys[i]) if use_dp else None)
            if collect:
                outs.append(x)
        return x, outs

    # ------------------------------------------------------------------ forward
    def __call__(self, text: jax.Array, text_mask: jax.Array, x_BLC_wo_prefix: jax.Array,
                 scales: Sequence[Sequence[int]], *, return_intermediates: bool = False,
                 rng: jax.Array | None = None, deterministic: bool = True):
        """Teacher-forced forward.

        Args:
          text: (B,T,Ct) caption features (padded); text_mask: (B,T) valid tokens.
          x_BLC_wo_prefix: (B, L-1, d) the resampled running code sums of scales 1..K-1.
          scales: the schedule ((1,h,w), ...); L = sum h*w.
          rng, deterministic: caption dropout (cond_drop_rate) and drop-path in training.
        Returns:
          logits (B, L, 2d) float32 (and a dict of intermediates if requested).
        """
        cfg = self.cfg
        scales = tuple(tuple(int(v) for v in s) for s in scales)
        L = scale_offsets(scales)[-1]
        B = x_BLC_wo_prefix.shape[0]
        if x_BLC_wo_prefix.shape[1] != L - 1:
            raise ValueError(f"x_BLC_wo_prefix has {x_BLC_wo_prefix.shape[1]} tokens; schedule needs {L - 1}")
        if x_BLC_wo_prefix.shape[-1] != cfg.token_bits:
            raise ValueError(f"x_BLC_wo_prefix has {x_BLC_wo_prefix.shape[-1]} channels; model expects {cfg.token_bits}")
        if len(scales) > cfg.num_levels:
            raise ValueError(f"schedule has {len(scales)} scales; the model has {cfg.num_levels} level embeddings")
        text = text.astype(jnp.float32)
        drop_rng = block_rng = None
        if rng is not None:
            drop_rng, block_rng = jax.random.split(rng)
        if not deterministic and cfg.cond_drop_rate > 0 and drop_rng is not None:
            drop = jax.random.uniform(drop_rng, (B,)) < cfg.cond_drop_rate
            text = jnp.where(drop[:, None, None], self.null_text(text_mask), text)
        tc, inter = self.text_condition(text, text_mask, return_intermediates=True)
        word = self.embed_scale_inputs(x_BLC_wo_prefix)
        x = jnp.concatenate([self.start_tokens(tc.cond), word], axis=1)
        x = x + self.lvl_embed[...][jnp.asarray(scale_ids(scales))][None]
        cos_sin = jnp.asarray(rope_cos_sin(cfg.head_dim, scales))
        x, outs = self.run_blocks(x, tc, cos_sin, tuple(scale_offsets(scales)), collect=return_intermediates, rng=block_rng,
                                  deterministic=deterministic)
        logits, hn = self.logits(x, tc.cond)
        if not return_intermediates:
            return logits
        inter.update(cond_BD=tc.cond, ca_kv=tc.ca_kv, shared_ada_lin_out=tc.ada, word_embed_out=word,
                     head_nm_out=hn, rope_cos_sin=cos_sin)
        for i, o in enumerate(outs):
            inter[f"block{i:02d}_out"] = o
        return logits, inter


Model = Infinity


def count_params(model: nnx.Module) -> int:
    return int(sum(np.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param))))
