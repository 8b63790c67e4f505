"""Softmax attention for Infinity, with one entry point per pattern and several backends.

Patterns (q (B,Lq,H,hd), k/v (B,Lk,H,hd); q already carries its scale, e.g. the cosine
temperature, unless ``scale`` is given):

* :func:`block_causal_attention`: training-time self-attention over a whole schedule. The
  block-causal mask is a prefix structure -- the tokens of scale i see exactly the keys
  ``[0, offsets[i+1])`` -- so every backend but ``reference`` runs it without a mask and without
  (L, L) logits.
* :func:`prefix_attention`: queries that see every key given (the KV-cache sampler: the tokens of
  one scale against the cache prefix), with an optional key padding mask (B, Lk) (cross-attention
  to a padded caption).

Backends (``InfinityConfig.attention_impl``):

=============  =========================================================================
``reference``  dense (B,H,Lq,Lk) fp32 logits with an explicit mask; kept for parity.
``xla``        per scale, queries in chunks of ``q_chunk`` against their visible prefix;
               a scale split into several chunks recomputes each chunk's logits in the
               backward pass (``jax.checkpoint``), so at most one chunk's logits live.
               Memory O(q_chunk x L) per head instead of O(L^2). Any backend.
``dot_product`` ``jax.nn.dot_product_attention`` per scale: cuDNN flash attention on GPU for
               16-bit inputs, XLA otherwise.
``splash``     the Pallas TPU splash-attention kernel with the block-causal mask (or, for
               :func:`prefix_attention` without a key mask, the padded-prefix mask)
               computed inside the kernel (no mask array); on other backends it runs in
               Pallas interpret mode (slow; for tests).
``auto``       ``splash`` on TPU, ``dot_product`` on GPU, ``xla`` on CPU.
=============  =========================================================================
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

from infinity_jax.sharding import logical_to_spec
from infinity_jax.transformer.config import ATTENTION_IMPLEMENTATIONS as IMPLEMENTATIONS, InfinityConfig

#: Implementations that run on a CPU (``splash`` in Pallas interpret mode).
CPU_IMPLEMENTATIONS = ("reference", "xla", "dot_product", "splash")
#: Default number of queries per chunk of the ``xla`` backend.
DEFAULT_Q_CHUNK = InfinityConfig.attention_q_chunk
#: most bytes of float32 logits one query chunk of :func:`prefix_attention` may hold: the sampler's
#: last 1M scale (2 x 16 heads x 4,096 queries against 10,521 cached keys) would otherwise hold
#: 1.3 GiB of logits per 1,024-query chunk, with as much again for the probabilities
LOGITS_BUDGET_BYTES = 256 * 2 ** 20
_NEG = -1e30


def resolve(impl: str, backend: str | None = None) -> str:
    """The concrete backend for ``impl`` (``auto`` picks by ``jax.default_backend()``)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    return {"tpu": "splash", "gpu": "dot_product", "cuda": "dot_product", "rocm": "dot_product"}.get(backend, "xla")


# ----------------------------------------------------------------------------- reference
def reference_attention(q, k, v, mask=None, scale=1.0):
    """Dense softmax attention. q (B,Lq,H,hd), k/v (B,Lk,H,hd); mask (B|1, 1|H, Lq|1, Lk) bool.

    Rows with no visible key give zeros, never NaN.
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, _NEG)
    probs = jax.nn.softmax(logits, axis=-1)
    if mask is not None:
        probs = jnp.where(jnp.any(mask, axis=-1, keepdims=True), probs, 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def block_causal_mask(offsets: Sequence[int]) -> np.ndarray:
    """(L, L) bool: a token of scale i sees every token of scales <= i (``offsets`` = scale starts + L)."""
    ends = scale_ends(offsets)
    return np.arange(offsets[-1])[None, :] < ends[:, None]


def scale_ends(offsets: Sequence[int]) -> np.ndarray:
    """(L,) int: for every token, the end of its scale (= how many keys it sees)."""
    return np.concatenate([np.full(b - a, b, np.int64) for a, b in zip(offsets[:-1], offsets[1:])])


# ----------------------------------------------------------------------------- xla
def _dense(q, k, v, key_mask, scale):
    """q (B,n,H,hd), k/v (B,m,H,hd), key_mask (B,m) bool or None -> (B,n,H,hd) in v.dtype."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32))
    if scale != 1.0:
        logits = logits * scale
    if key_mask is not None:
        m = key_mask[:, None, None, :]
        logits = jnp.where(m, logits, _NEG)
    probs = jax.nn.softmax(logits, axis=-1)
    if key_mask is not None:
        probs = jnp.where(jnp.any(key_mask, axis=-1)[:, None, None, None], probs, 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def _chunked(q, k, v, key_mask, scale, q_chunk):
    """Queries in chunks of at most ``q_chunk`` rows; each chunk rematerialised when there are several."""
    n = q.shape[1]
    if n <= q_chunk:
        return _dense(q, k, v, key_mask, scale)
    fn = jax.checkpoint(functools.partial(_dense, scale=scale), prevent_cse=False)
    outs = [fn(q[:, a:a + q_chunk], k, v, key_mask) for a in range(0, n, q_chunk)]
    return jnp.concatenate(outs, axis=1)


# ----------------------------------------------------------------------------- dot_product
def _dot_product(q, k, v, key_mask, scale):
    """``jax.nn.dot_product_attention``: cuDNN on GPU for 16-bit inputs, else XLA."""
    on_gpu = jax.default_backend() in ("gpu", "cuda", "rocm")
    half = v.dtype in (jnp.bfloat16, jnp.float16)
    impl = "cudnn" if (on_gpu and half and q.shape[-1] <= 128) else "xla"
    dt = v.dtype if impl == "cudnn" else jnp.float32
    lengths = None
    mask = None
    if key_mask is not None:
        if impl == "cudnn":
            lengths = jnp.sum(key_mask, axis=-1).astype(jnp.int32)  # captions are padded at the end
        else:
            mask = key_mask[:, None, None, :]
    out = jax.nn.dot_product_attention(q.astype(dt), k.astype(dt), v.astype(dt), mask=mask, scale=scale,
                                       key_value_seq_lengths=lengths, implementation=impl)
    if key_mask is not None:
        out = jnp.where(jnp.any(key_mask, axis=-1)[:, None, None, None], out, 0.0)
    return out.astype(v.dtype)


# ----------------------------------------------------------------------------- splash
def _splash_mask_function(offsets: tuple[int, ...]):
    """In-kernel block-causal mask: key j is visible to query i iff j < end(scale of i).

    Padded queries (i >= L) see every real key; padded keys (j >= L) are never visible.
    """
    starts, sizes = offsets[1:-1], [b - a for a, b in zip(offsets[1:-1], offsets[2:])]

    def visible(q_ids, kv_ids):
        end = offsets[1] + 0 * q_ids
        for s, n in zip(starts, sizes):
            end = end + (q_ids >= s) * n
        return kv_ids < end

    return visible


def _prefix_mask_function(visible: int):
    """Every query sees keys [0, visible): the padded keys past the real prefix are hidden."""
    return lambda q_ids, kv_ids: kv_ids < visible + 0 * q_ids


def _splash_kernel(shape: tuple[int, int], mask_function, key: tuple, heads: int, interpret: bool,
                   block_q: int, block_kv: int):
    """A splash-attention kernel over a (q, kv) grid of ``shape`` whose mask ``mask_function``
    computes inside the kernel (no mask array); ``key`` identifies the mask for tracing caches."""
    class ComputedMask(sm._ComputableMask):  # noqa: SLF001 - the documented way to add a lazy mask
        def __init__(self):
            super().__init__(shape=shape, mask_function=mask_function)

        def __eq__(self, other):
            return isinstance(other, ComputedMask) and other.shape == self.shape

        def __hash__(self):
            return hash((ComputedMask, self.shape, key))

    mask = sm.MultiHeadMask([ComputedMask() for _ in range(heads)])
    sizes = sk.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv, block_q_dkv=block_q,
                          block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv, block_q_dq=block_q, block_kv_dq=block_kv)
    # built per trace: its mask tables become constants of the program that uses them
    return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash(q, k, v, kernel_for, q_padded: int, kv_padded: int):
    """Run ``kernel_for(heads, interpret)`` on q (B,Lq,H,hd) and k/v (B,Lk,H,hd) padded to
    ``q_padded`` / ``kv_padded`` rows -> (B,Lq,H,hd). The compiled kernel when lowering for TPU (also
    a TPU topology compiled from a CPU host), the same kernel in Pallas interpret mode elsewhere;
    ``shard_map`` over batch and heads on a mesh."""
    B, Lq, H, hd = q.shape
    dt = v.dtype

    def run(qb, kb, vb):
        h = qb.shape[2]
        pad = lambda t, n: jnp.pad(t, ((0, 0), (0, n - t.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3).astype(dt)
        args = (pad(qb, q_padded), pad(kb, kv_padded), pad(vb, kv_padded))

        def kernel_fn(interpret):
            return lambda *a: jax.vmap(kernel_for(h, interpret))(*a)

        out = jax.lax.platform_dependent(*args, tpu=kernel_fn(False), default=kernel_fn(True))
        return out.transpose(0, 2, 1, 3)[:, :Lq]

    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size <= 1:
        return run(q, k, v)
    spec = _batch_head_spec(mesh, B, H)
    return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def _splash_block_causal(q, k, v, offsets: tuple[int, ...], block: int = 128):
    """Splash attention over the padded sequence with the block-causal mask; q/k/v (B,L,H,hd) -> (B,L,H,hd)."""
    padded = -(-q.shape[1] // block) * block
    mask_function = _splash_mask_function(offsets)
    return _splash(q, k, v, lambda h, interpret: _splash_kernel((padded, padded), mask_function, offsets, h, interpret,
                                                                block, block), padded, padded)


def _splash_prefix(q, k, v, block: int = 512):
    """Splash attention where every query sees every key (the sampler's scale against its cache
    prefix): keys padded to blocks of ``block`` and hidden past the real prefix, queries in blocks
    of up to ``block``. q (B,n,H,hd) pre-scaled, k/v (B,Lk,H,hd) -> (B,n,H,hd)."""
    n, Lk = q.shape[1], k.shape[1]
    block_q = min(block, -(-n // 128) * 128)
    q_padded, kv_padded = -(-n // block_q) * block_q, -(-Lk // block) * block
    mask_function = _prefix_mask_function(Lk)
    return _splash(q, k, v, lambda h, interpret: _splash_kernel((q_padded, kv_padded), mask_function, ("prefix", Lk),
                                                                h, interpret, block_q, block), q_padded, kv_padded)


def _batch_head_spec(mesh, B: int, H: int):
    """(batch, len, heads, hd) activation spec whose axes divide B and H (else that dim replicated)."""
    spec = list(logical_to_spec(("act_batch", "act_len", "act_heads", "act_kv"), mesh=mesh))
    spec += [None] * (4 - len(spec))
    for dim, size in ((0, B), (2, H)):
        axes = spec[dim]
        if axes is None:
            continue
        n = int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)]))
        if size % n:
            spec[dim] = None
    return jax.sharding.PartitionSpec(*spec)


# ----------------------------------------------------------------------------- entry points
def block_causal_attention(q, k, v, offsets: Sequence[int], *, impl: str = "xla",
                           q_chunk: int = DEFAULT_Q_CHUNK) -> jax.Array:
    """Self-attention over a whole schedule: scale i's queries see keys [0, offsets[i+1]).

    q, k, v: (B,L,H,hd) with L = offsets[-1] (q pre-scaled). Returns (B,L,H,hd) in v.dtype.
    """
    impl = resolve(impl)
    offsets = tuple(int(o) for o in offsets)
    if q.shape[1] != offsets[-1]:
        raise ValueError(f"sequence of {q.shape[1]} tokens; the schedule has {offsets[-1]}")
    if impl == "reference":
        return reference_attention(q, k, v, jnp.asarray(block_causal_mask(offsets))[None, None])
    if impl == "splash":
        return _splash_block_causal(q, k, v, offsets)
    outs = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        qs, ks, vs = q[:, a:b], k[:, :b], v[:, :b]
        if impl == "dot_product":
            outs.append(_dot_product(qs, ks, vs, None, 1.0))
        else:
            outs.append(_chunked(qs, ks, vs, None, 1.0, q_chunk))
    return jnp.concatenate(outs, axis=1)


def prefix_attention(q, k, v, key_mask=None, *, scale: float = 1.0, impl: str = "xla",
                     q_chunk: int = DEFAULT_Q_CHUNK, logits_budget: int = LOGITS_BUDGET_BYTES) -> jax.Array:
    """Every query sees every key (subject to ``key_mask`` (B,Lk) bool). Returns (B,Lq,H,hd).

    Serves the KV-cache sampler (one scale against the cache prefix) and cross-attention to a
    padded caption. ``splash`` runs the kernel where no ``key_mask`` is given (the sampler: no
    logits leave the kernel) and ``xla`` for padded keys; ``xla`` takes query chunks of at most
    ``q_chunk`` rows and at most ``logits_budget`` bytes of float32 logits each.
    """
    impl = resolve(impl)
    if impl == "reference":
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return reference_attention(q, k, v, mask, scale)
    if impl == "dot_product":
        return _dot_product(q, k, v, key_mask, scale)
    if impl == "splash" and key_mask is None:
        return _splash_prefix(q if scale == 1.0 else q * jnp.asarray(scale, q.dtype), k, v)
    B, n, H, _ = q.shape
    rows = max(1, int(logits_budget) // (B * H * k.shape[1] * 4))
    if rows < min(q_chunk, n):  # equal chunks under the budget
        q_chunk = -(-n // -(-n // rows))
    return _chunked(q, k, v, key_mask, scale, q_chunk)
