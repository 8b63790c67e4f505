"""Scale-by-scale autoregressive sampling with a KV cache and classifier-free guidance.

For each scale k of the schedule (h_k x w_k tokens starting at offset o_k):
  1. the tokens of scale k (start token for k = 0, else ``word_embed`` of the resampled running
     code sum) get ``lvl_embed[k]`` and go through every block; each self-attention writes its
     keys/values into a cache allocated once for the schedule and attends to the cache prefix
     [0, o_k + h_k w_k) (so no mask is needed); the last scale stores nothing (no later scale
     reads it) and attends to the cache and its own keys/values, so the cache ends at o_{K-1};
  2. the AdaLN head gives raw logits (2B, h_k w_k, 2d) (conditional rows first);
  3. logits / tau_k, then guidance ``cfg_k * cond + (1 - cfg_k) * uncond``;
  4. per bit: top-k / top-p over the two classes, then a draw with each image's own key
     (or greedy, or replayed bits);
  5. codes = (2 bits - 1)/sqrt(d); the running sum on the final grid grows by the bilinear
     upsampled codes and is resized to the next grid for the next scale's input.

Each scale is one ``jax.jit`` program, compiled once per (schedule, batch size, settings) and
reused; guidance and temperature are traced values, so changing them does not recompile.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infinity_jax.schedules import scale_offsets, tokenizer_schedule
from infinity_jax.tokenizer.packing import patchify, unpatchify
from infinity_jax.tokenizer.quantizer import bits_to_codes
from infinity_jax.tokenizer.resample import bilinear_resize
from infinity_jax.transformer.model import Infinity, TextCondition
from infinity_jax.transformer.rope import rope_cos_sin


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Settings of one sampling run.

    cfg, tau: a float for every scale or a per-scale sequence. top_k: 0 = off, 1 = greedy.
    top_p: 0 = off, else keep the smallest set of classes with mass >= top_p. greedy: argmax.
    cfg_insertion_layer: 0 = guidance on logits (official default); -n (1 <= n < depth) = on
    the hidden states after block depth-n. Anything else is an error (:meth:`validate`): the
    official sampler rejects it too, where it would otherwise silently turn guidance off.
    """

    cfg: float | Sequence[float] = 3.0
    tau: float | Sequence[float] = 1.0
    top_k: int = 900
    top_p: float = 0.97
    greedy: bool = False
    cfg_insertion_layer: int = 0

    def validate(self, depth: int) -> "SamplingConfig":
        """Raises ValueError for a ``cfg_insertion_layer`` outside {0} and [-(depth-1), -1]."""
        c = self.cfg_insertion_layer
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not (c == 0 or -depth < c < 0):
            raise ValueError(f"cfg_insertion_layer must be 0 (guidance on the logits) or in [{1 - depth}, -1] "
                             f"(on the hidden states after block depth+n) for this depth-{depth} model; got {c!r}")
        return self

    def per_scale(self, value, K: int) -> np.ndarray:
        v = np.asarray(value, np.float32).reshape(-1)
        if v.size == 1:
            return np.full(K, v[0], np.float32)
        if v.size < K:
            raise ValueError(f"per-scale list has {v.size} values for {K} scales")
        return v[:K]


class SampleOutput(NamedTuple):
    """bits: per scale (B, h, w, d) int32 on the tokenizer grid; summed_codes: (B, H, W, d);
    head_logits: per scale raw head output (2B or B, h*w, 2d); images: (B, 8H|16H, .., 3) in
    [-1, 1] when a tokenizer was given; previews: per scale decoded images if requested."""

    bits: list
    summed_codes: jax.Array
    head_logits: list
    images: jax.Array | None
    previews: list | None


def sample_bits(logits: jax.Array, key: jax.Array, *, top_k, top_p, greedy) -> jax.Array:
    """Draw bits from guided logits (B, n, 2d) -> (B, n, d) int32, one key per image (B, 2).

    ``top_k`` (1 = greedy, else no-op for two classes), ``top_p`` (0 = off) and ``greedy`` may be
    traced values, so one compiled program serves every sampling rule.
    """
    lg = logits.reshape(*logits.shape[:-1], -1, 2).astype(jnp.float32)
    l0, l1 = lg[..., 0], lg[..., 1]
    argmax = (l1 > l0).astype(jnp.int32)
    p1 = jax.nn.sigmoid(l1 - l0)
    # top-p: sorted ascending, a class whose cumulative mass <= 1 - top_p is removed (never the top one)
    pmin = jnp.minimum(p1, 1 - p1)
    det = (top_p > 0) & (pmin <= (1 - top_p))
    p1 = jnp.where(det, argmax.astype(jnp.float32), p1)
    u = jax.vmap(lambda k: jax.random.uniform(k, lg.shape[1:-1]))(key)
    drawn = (u < p1).astype(jnp.int32)
    return jnp.where(greedy | (top_k == 1), argmax, drawn)


class Sampler:
    """KV-cache sampler around an :class:`Infinity` model and (optionally) a tokenizer.

    ``tokenizer`` needs ``decode(codes (B,H,W,d)) -> images (B,H',W',3)``.
    """

    def __init__(self, model: Infinity, tokenizer=None, *, cache_dtype=None):
        self.model = model
        self.cfg = model.cfg
        self.tokenizer = tokenizer
        self.graphdef, self.state = nnx.split(model)
        self.cache_dtype = jnp.dtype(cache_dtype or self.cfg.dtype)
        self._compiled: dict = {}
        self.compile_seconds = 0.0

    @classmethod
    def from_abstract(cls, graphdef, state: nnx.State, cfg, *, cache_dtype=None) -> "Sampler":
        """A sampler over an abstract model (``graphdef`` + a state of ``jax.ShapeDtypeStruct``): its
        jitted programs can be lowered and compiled ahead of time (e.g. for a TPU topology), not run."""
        self = cls.__new__(cls)
        self.model, self.cfg, self.tokenizer = None, cfg, None
        self.graphdef, self.state = graphdef, state
        self.cache_dtype = jnp.dtype(cache_dtype or cfg.dtype)
        self._compiled = {}
        self.compile_seconds = 0.0
        return self

    @staticmethod
    def cache_length(scales: Sequence[Sequence[int]]) -> int:
        """Tokens the KV cache holds: every scale but the last, whose keys/values no later scale
        reads (it attends to the cache and to its own keys/values directly). At pn=1M that is
        6,425 of 10,521 tokens."""
        return scale_offsets(scales)[-2] if len(scales) > 1 else 0

    def cache_spec(self, rows: int, scales: Sequence[Sequence[int]]) -> jax.ShapeDtypeStruct:
        """The key (or value) cache of every layer for ``rows`` sequences of the schedule ``scales``:
        ``(depth, rows, heads, length rounded up to 128, head_dim)``. Heads-major as attention reads
        it, and a length that tiles without padding, so that no program relayouts (copies) the
        cache; the rows past :meth:`cache_length` are never read. One array per kind, so the
        layers can run as one ``lax.scan`` that updates it in place."""
        c = self.cfg
        length = -(-self.cache_length(scales) // 128) * 128
        return jax.ShapeDtypeStruct((c.depth, rows, c.num_heads, length, c.head_dim), self.cache_dtype)

    def programs(self, scales: Sequence[Sequence[int]], B: int, use_cfg: bool, cfg_insertion_layer: int = 0):
        """``(prepare, [step_k for every scale])``: the jitted programs :meth:`generate` runs. A step
        takes and returns the caches (:meth:`cache_spec`, donated); the first takes None and
        allocates them."""
        scales = tuple((1, int(s[-2]), int(s[-1])) for s in scales)
        return self._prepare_fn(use_cfg), [self._step_fn(k, scales, B, use_cfg, int(cfg_insertion_layer))
                                           for k in range(len(scales))]

    # -------------------------------------------------------------- jitted pieces
    def _prepare_fn(self, use_cfg: bool):
        key = ("prepare", use_cfg)
        if key not in self._compiled:
            graphdef = self.graphdef

            def prepare(state, text, mask, neg_text, neg_mask):
                model = nnx.merge(graphdef, state)
                if use_cfg:
                    if neg_text is None:
                        neg_text, neg_mask = model.null_text(mask), mask
                    T = max(text.shape[1], neg_text.shape[1])
                    pad = lambda a, m: (jnp.pad(a, ((0, 0), (0, T - a.shape[1]), (0, 0))),
                                        jnp.pad(m, ((0, 0), (0, T - m.shape[1]))))
                    (text, mask), (neg_text, neg_mask) = pad(text, mask), pad(neg_text, neg_mask)
                    text = jnp.concatenate([text, neg_text], 0)
                    mask = jnp.concatenate([mask, neg_mask], 0)
                tc = model.text_condition(text.astype(jnp.float32), mask)
                return tc, model.start_tokens(tc.cond)

            self._compiled[key] = jax.jit(prepare)
        return self._compiled[key]

    def _step_fn(self, k: int, scales: tuple, B: int, use_cfg: bool, cfg_layer: int):
        key = ("step", k, scales, B, use_cfg, cfg_layer)
        if key in self._compiled:
            return self._compiled[key]
        graphdef, mcfg = self.graphdef, self.cfg
        offs = scale_offsets(scales)
        off, n = offs[k], offs[k + 1] - offs[k]
        K = len(scales)
        vs = tokenizer_schedule(scales, mcfg.apply_spatial_patchify)
        H, W = vs[-1][1:]
        _, h, w = scales[k]
        cos_sin_all = rope_cos_sin(mcfg.head_dim, scales)
        cos_sin = jnp.asarray(cos_sin_all[:, off:off + n])
        dtype = jnp.dtype(mcfg.dtype)
        spec = self.cache_spec(2 * B if use_cfg else B, scales)

        def layer(blk, i, x, kc, vc, tc, cfg_k):
            """Block ``i`` on scale k's tokens; ``kc``/``vc`` (depth, 2B, H, Lc, hd) caches (None at the
            first scale), ``i`` a Python or traced layer index. Returns (x, kc, vc, new): the caches with
            this scale's keys/values stored, or at the first scale ``new``, its keys/values (2B, H, n, hd)."""
            out = {}

            def attend_to(kk, vv):  # (2B, n, H, hd) -> the visible prefix [0, off + n) as (2B, off + n, H, hd)
                kk, vv = kk.astype(self.cache_dtype), vv.astype(self.cache_dtype)
                if k == 0:  # nothing cached yet
                    out["new"] = (kk.transpose(0, 2, 1, 3), vv.transpose(0, 2, 1, 3))
                    return kk, vv

                def seen(c, t):
                    prefix = jax.lax.dynamic_index_in_dim(c, i, 0, keepdims=False)[:, :, :off]
                    return jnp.concatenate([prefix.transpose(0, 2, 1, 3), t], axis=1)

                if k != K - 1:  # the last scale stores nothing: no later scale reads it
                    put = lambda c, t: jax.lax.dynamic_update_slice(c, t.transpose(0, 2, 1, 3)[None], (i, 0, 0, off, 0))
                    out["k"], out["v"] = put(kc, kk), put(vc, vv)
                return seen(kc, kk), seen(vc, vv)

            x = blk(x, tc.ada, tc.ca_kv, tc.text_mask, cos_sin, None, dtype=dtype, kv_cache=attend_to)
            if use_cfg and cfg_layer < 0:  # guidance on the hidden states after block depth + cfg_layer
                hit = i == mcfg.depth + cfg_layer
                mixed = lambda: jnp.tile(cfg_k * x[:B] + (1 - cfg_k) * x[B:], (2, 1, 1))
                x = (mixed() if hit else x) if isinstance(hit, bool) else jnp.where(hit, mixed(), x)
            return x, out.get("k", kc), out.get("v", vc), out.get("new")

        def step(state, caches, x, tc: TextCondition, cfg_k, tau_k, rule, keys, replay, replay_bits, summed):
            model = nnx.merge(graphdef, state)
            x = x + model.lvl_embed[...][k][None, None]
            kc, vc = caches if k else (None, None)
            if mcfg.scan_blocks:  # one compiled layer, the caches carried and updated in place
                bg, bs = nnx.split(model.blocks)

                def body(carry, inp):
                    st, i = inp
                    x, kc, vc, new = layer(nnx.merge(bg, st), i, *carry, tc, cfg_k)
                    return (x, kc, vc), new

                (x, kc, vc), new = jax.lax.scan(body, (x, kc, vc), (bs, jnp.arange(mcfg.depth)))
            else:
                news = []
                for i, blk in enumerate(model.blocks):
                    x, kc, vc, n_i = layer(blk, i, x, kc, vc, tc, cfg_k)
                    news.append(n_i)
                new = jax.tree.map(lambda *t: jnp.stack(t), *news) if k == 0 else None
            if k == 0:  # the first scale allocates the caches with its keys/values in place: a zero cache
                # carried through the layer loop (or donated) came back from XLA:TPU as a copy of the whole stack
                zeros = jnp.zeros(spec.shape, spec.dtype)  # a one-scale schedule caches nothing
                kc, vc = (zeros.at[:, :, :, :n].set(t) for t in new) if K > 1 else (zeros, zeros)
            raw, _ = model.logits(x, tc.cond)
            if use_cfg and cfg_layer == 0:
                lg = raw / tau_k
                guided = cfg_k * lg[:B] + (1 - cfg_k) * lg[B:]
            else:
                guided = raw[:B] / tau_k
            step_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, k))(keys)
            top_k, top_p, greedy = rule
            bits = sample_bits(guided, step_keys, top_k=top_k, top_p=top_p, greedy=greedy).reshape(B, h, w, -1)
            if mcfg.apply_spatial_patchify:
                bits = unpatchify(bits)
            bits = jnp.where(replay, replay_bits, bits)
            codes = bits_to_codes(bits)
            if k != K - 1:
                summed = summed + bilinear_resize(codes, (H, W))
                nxt = bilinear_resize(summed, vs[k + 1][1:])
                if mcfg.apply_spatial_patchify:
                    nxt = patchify(nxt)
                nxt = model.embed_scale_inputs(nxt.reshape(B, -1, nxt.shape[-1]))
                if use_cfg:
                    nxt = jnp.concatenate([nxt, nxt], 0)
            else:
                summed = summed + codes
                nxt = None
            return (kc, vc), bits, raw, summed, nxt

        fn = jax.jit(step, donate_argnums=(1,))
        self._compiled[key] = fn
        return fn

    # -------------------------------------------------------------- public
    def generate(self, text: jax.Array, text_mask: jax.Array, scales: Sequence[Sequence[int]], *,
                 settings: SamplingConfig = SamplingConfig(), seeds: Sequence[int] | jax.Array | None = None,
                 neg_text: jax.Array | None = None, neg_mask: jax.Array | None = None,
                 replay_bits: Sequence[jax.Array] | None = None, replay_scales: int | None = None,
                 decode: bool = True, previews: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> SampleOutput:
        """Generate B images.

        Args:
          text, text_mask: (B,T,Ct) caption features and (B,T) mask.
          scales: the transformer schedule ((1,h,w), ...).
          settings: guidance, temperature and sampling rule.
          seeds: one integer per image (or (B,2) keys); default 0..B-1.
          neg_text, neg_mask: negative prompt features (replace the learned null condition).
          replay_bits: per scale (B,h,w,d) bits on the tokenizer grid to feed instead of sampling
            (e.g. a reference image's bits); ``replay_scales`` limits replay to the first n scales.
          decode: decode the final codes with the tokenizer; previews: also decode after every scale.
          progress: called as progress(k, K) after each scale.
        """
        mcfg = self.cfg
        scales = tuple((1, int(s[-2]), int(s[-1])) for s in scales)
        K = len(scales)
        if K > mcfg.num_levels:
            raise ValueError(f"schedule has {K} scales; the model supports {mcfg.num_levels}")
        text = jnp.asarray(text, jnp.float32)
        text_mask = jnp.asarray(text_mask).astype(bool)
        B = text.shape[0]
        if text.shape[-1] != mcfg.text_channels:
            raise ValueError(f"text features have {text.shape[-1]} channels; the model expects {mcfg.text_channels}")
        settings.validate(mcfg.depth)
        cfgs = settings.per_scale(settings.cfg, K)
        taus = settings.per_scale(settings.tau, K)
        use_cfg = bool(np.any(cfgs != 1.0))
        if seeds is None:
            seeds = np.arange(B)
        if not isinstance(seeds, jax.Array):  # Python ints up to 2**32 - 1 (int32 would overflow)
            seeds = np.asarray(seeds)
            seeds = seeds.astype(np.uint32) if seeds.ndim == 1 else seeds
        seeds = jnp.asarray(seeds)
        keys = jax.vmap(jax.random.PRNGKey)(seeds.astype(jnp.uint32)) if seeds.ndim == 1 else seeds
        n_replay = 0 if replay_bits is None else (len(replay_bits) if replay_scales is None else min(replay_scales, len(replay_bits)))
        tc, x = self._prepare_fn(use_cfg)(self.state, text, text_mask,
                                           None if neg_text is None else jnp.asarray(neg_text, jnp.float32),
                                           None if neg_mask is None else jnp.asarray(neg_mask).astype(bool))
        caches = None  # the first scale's program allocates them
        vs = tokenizer_schedule(scales, mcfg.apply_spatial_patchify)
        summed = jnp.zeros((B, vs[-1][1], vs[-1][2], mcfg.codebook_dim), jnp.float32)
        bits_out, logits_out, prev = [], [], [] if previews else None
        rule = (jnp.int32(settings.top_k), jnp.float32(settings.top_p), jnp.bool_(settings.greedy))
        for k in range(K):
            replay = k < n_replay
            fn = self._step_fn(k, scales, B, use_cfg, int(settings.cfg_insertion_layer))
            grid = vs[k][1:]
            rb = (jnp.asarray(replay_bits[k], jnp.int32) if replay
                  else jnp.zeros((B, grid[0], grid[1], mcfg.codebook_dim), jnp.int32))
            if rb.shape != (B, grid[0], grid[1], mcfg.codebook_dim):
                raise ValueError(f"replayed bits of scale {k} have shape {rb.shape}; expected "
                                 f"{(B, grid[0], grid[1], mcfg.codebook_dim)}")
            caches, bits, raw, summed, x = fn(self.state, caches, x, tc, jnp.float32(cfgs[k]), jnp.float32(taus[k]),
                                              rule, keys, jnp.bool_(replay), rb, summed)
            bits_out.append(bits)
            logits_out.append(raw)
            if previews and self.tokenizer is not None:
                prev.append(self.tokenizer.decode(self._preview_codes(bits_out, vs)))
            if progress is not None:
                progress(k + 1, K)
        images = None
        if decode and self.tokenizer is not None:
            images = self.tokenizer.decode(summed)
        return SampleOutput(bits_out, summed, logits_out, images, prev)

    @staticmethod
    def _preview_codes(bits_list, vs):
        H, W = vs[-1][1:]
        s = 0.0
        for b in bits_list:
            s = s + bilinear_resize(bits_to_codes(b), (H, W))
        return s
