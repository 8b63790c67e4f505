"""Configuration of the Infinity transformer and the official model sizes."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from infinity_jax.schedules import PATCHIFY_FACTOR, official_patchify

#: ``attention_impl`` values (the backends live in :mod:`infinity_jax.transformer.attention`).
ATTENTION_IMPLEMENTATIONS = ("auto", "reference", "xla", "dot_product", "splash")


@dataclasses.dataclass(frozen=True)
class InfinityConfig:
    """Hyper-parameters of the scale-autoregressive transformer.

    Attributes:
      depth, embed_dim (C), num_heads: backbone size; head_dim = C / num_heads.
      mlp_ratio: FFN hidden = round(C * mlp_ratio / 256) * 256 (Python rounding).
      codebook_dim: d, bits per tokenizer token; the transformer token holds ``token_bits``.
      apply_spatial_patchify: 2x2 tokenizer tokens packed into one transformer token (8B).
      text_channels: T5 width (2048 for Flan-T5-XL); text_maxlen: rows of the learned null text.
      norm_eps: LayerNorm / RMSNorm epsilon.
      block_chunks: official state_dict nesting (``block_chunks.{c}.module.{i}``); naming only.
      scan_blocks: stack blocks and run them with ``jax.lax.scan``; remat: checkpoint each block;
        remat_policy: what a checkpointed block keeps (``full``: nothing; ``dots``: weight matmuls,
        never attention logits).
      drop_path_rate: stochastic depth (linearly increasing per block), training only.
      cond_drop_rate: classifier-free-guidance dropout of the caption during training.
      dtype: compute dtype of the blocks (params stay float32); norms, AdaLN, head are fp32.
      attention_impl: ``auto`` (by backend), ``reference`` (dense with a mask, for parity), ``xla``
        (chunked per-scale prefix attention), ``dot_product`` (``jax.nn.dot_product_attention``,
        cuDNN on GPU), ``splash`` (Pallas TPU kernel); see :mod:`infinity_jax.transformer.attention`.
      attention_q_chunk: queries per chunk of the ``xla`` backend (memory ~ chunk x sequence).
      init_std, init_aln, init_aln_gamma, init_head, init_proj_scale: the official initialisation from
        scratch (``train.py``: ``init_weights(other_std=tini)`` then ``special_init``), by their
        official arguments ``--tini`` (< 0: sqrt(1/(3C))), ``--aln``, ``--alng`` (< 0: same as aln),
        ``--hd0`` (< 0: head not rescaled) and ``--diva`` (1: residual projections x 1/sqrt(2 depth));
        defaults are ``scripts/train.sh``'s. See :meth:`Infinity.__init__`.
    """

    depth: int = 2
    embed_dim: int = 128
    num_heads: int = 2
    mlp_ratio: float = 4.0
    codebook_dim: int = 32
    apply_spatial_patchify: bool = False
    text_channels: int = 2048
    text_maxlen: int = 512
    norm_eps: float = 1e-6
    block_chunks: int = 1
    scan_blocks: bool = False
    remat: bool = False
    remat_policy: str = "full"
    drop_path_rate: float = 0.0
    cond_drop_rate: float = 0.0
    num_levels: int = 15
    dtype: str = "float32"
    attention_impl: str = "auto"
    attention_q_chunk: int = 1024
    init_std: float = -1.0
    init_aln: float = 1e-3
    init_aln_gamma: float = 5e-6
    init_head: float = 0.02
    init_proj_scale: int = 1

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.embed_dim * self.mlp_ratio / 256) * 256)

    @property
    def init_linear_std(self) -> float:
        """``--tini``: std of every Linear / Embedding weight (sqrt(1/(3C)) when negative)."""
        return self.init_std if self.init_std >= 0 else math.sqrt(1 / self.embed_dim / 3)

    @property
    def init_gamma_mult(self) -> float:
        """``--alng``: multiplier of the AdaLN gamma channels (``--aln`` when negative)."""
        return self.init_aln_gamma if self.init_aln_gamma >= 0 else self.init_aln

    @property
    def token_bits(self) -> int:
        """Bits per transformer token: d, or 4d with spatial patchify."""
        return self.codebook_dim * (PATCHIFY_FACTOR ** 2 if self.apply_spatial_patchify else 1)

    @property
    def vocab(self) -> int:
        """Head outputs: two logits per bit."""
        return 2 * self.token_bits

    @property
    def pool_heads(self) -> int:
        """Heads of the attentive text pool: text_channels / (128, or 64 when C > 4096)."""
        return max(1, self.text_channels // (64 if self.embed_dim > 4096 else 128))

    def replace(self, **kw) -> "InfinityConfig":
        return dataclasses.replace(self, **kw)

    def validate(self) -> "InfinityConfig":
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(f"head_dim {self.head_dim} must be a multiple of 4 for 2-D RoPE")
        if self.embed_dim % self.pool_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by {self.pool_heads} pool heads")
        if self.attention_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"unknown attention_impl {self.attention_impl!r}; choose one of "
                             f"{', '.join(ATTENTION_IMPLEMENTATIONS)}")
        if self.remat_policy not in ("full", "dots"):
            raise ValueError(f"unknown remat_policy {self.remat_policy!r}; choose 'full' or 'dots'")
        if self.attention_q_chunk < 1:
            raise ValueError(f"attention_q_chunk must be positive, got {self.attention_q_chunk}")
        if self.init_proj_scale not in (0, 1):
            raise ValueError(f"init_proj_scale (official --diva) must be 0 or 1, got {self.init_proj_scale}")
        if self.depth % max(self.block_chunks, 1):
            raise ValueError(f"depth {self.depth} is not divisible by block_chunks {self.block_chunks}")
        return self

    @classmethod
    def from_official(cls, d: Mapping[str, Any], codebook_dim: int | None = None, **overrides) -> "InfinityConfig":
        """From the official ``Infinity(...)`` constructor arguments.

        ``d`` is those arguments, or a fixture manifest / its ``config`` (read from its ``infinity``
        section); ``apply_spatial_patchify`` is read by :func:`~infinity_jax.schedules.official_patchify`.
        """
        d = dict(d)
        patchify = official_patchify(d)
        for key in ("config", "infinity"):
            if isinstance(d.get(key), Mapping):
                d = dict(d[key])
        for flag, want in (("use_bit_label", 1), ("shared_aln", True), ("head_aln", True), ("cos_attn", True),
                           ("rope2d_each_sa_layer", 1), ("rope2d_normalized_by_hw", 2),
                           ("add_lvl_embeding_only_first_block", 1), ("swiglu", False), ("rms_norm", False),
                           ("nm0", False), ("head_depth", 1)):
            if flag in d and d[flag] != want:
                raise ValueError(f"official option {flag}={d[flag]!r} is not supported (released models use {want!r})")
        if "cross_attn_layer_scale" in d and d["cross_attn_layer_scale"] >= 0:
            raise ValueError("cross_attn_layer_scale >= 0 (learnable CA gamma) is not supported")
        V = d.get("V")
        if codebook_dim is None:
            codebook_dim = V // 2 // (PATCHIFY_FACTOR ** 2 if patchify else 1) if V else 32
        kw = dict(
            depth=int(d["depth"]), embed_dim=int(d["embed_dim"]), num_heads=int(d["num_heads"]),
            mlp_ratio=float(d.get("mlp_ratio", 4.0)), codebook_dim=int(codebook_dim),
            apply_spatial_patchify=patchify,
            text_channels=int(d.get("text_channels", 2048)), text_maxlen=int(d.get("text_maxlen", 512)),
            norm_eps=float(d.get("norm_eps", 1e-6)), block_chunks=int(d.get("block_chunks", 1) or 1),
            drop_path_rate=float(d.get("drop_path_rate", 0.0)), cond_drop_rate=float(d.get("cond_drop_rate", 0.0)),
        )
        kw.update(overrides)
        return cls(**kw).validate()


# Official sizes (infinity/models/infinity.py registrations and tools/run_infinity.py).
# name: (depth, embed_dim, num_heads, drop_path, block_chunks, codebook_dim, patchify)
_SIZES = {
    "layer12": (12, 768, 8, 0.1, 4, 32, False),
    "layer16": (16, 1152, 12, 0.1, 4, 32, False),
    "layer24": (24, 1536, 16, 0.1, 4, 32, False),
    "layer32": (32, 2080, 20, 0.1, 4, 32, False),
    "layer40": (40, 2688, 24, 0.1, 4, 32, False),
    "layer48": (48, 3360, 28, 0.1, 4, 32, False),
    "2b": (32, 2048, 16, 0.1, 8, 32, False),
    "8b": (40, 3584, 28, 0.1, 8, 14, True),
    "20b": (58, 4608, 36, 0.25, 2, 32, False),
}

#: Parameter counts of the official models (state_dict tensors, buffers excluded), as
#: derived from the official module definitions.
OFFICIAL_PARAM_COUNTS = {
    "layer12": 125_185_696,
    "layer16": 361.6e6,
    "layer24": 940.9e6,
    "layer32": 2_257e6,
    "layer40": 4_716e6,
    "layer48": 8_767e6,
    "2b": 2_205e6,
    "8b": 8_376e6,
    "20b": 19_950e6,
}

SIZE_NAMES = tuple(_SIZES)


def size_config(name: str, **overrides) -> InfinityConfig:
    """The config of an official size (``layer12`` ... ``layer48``, ``2b``, ``8b``, ``20b``)."""
    key = name.lower().replace("infinity_", "")
    if key not in _SIZES:
        raise ValueError(f"unknown model size {name!r}; choose one of {', '.join(_SIZES)}")
    depth, C, H, dp, chunks, d, patchify = _SIZES[key]
    kw = dict(depth=depth, embed_dim=C, num_heads=H, drop_path_rate=dp, block_chunks=chunks,
              codebook_dim=d, apply_spatial_patchify=patchify, text_channels=2048, text_maxlen=512)
    kw.update(overrides)
    return InfinityConfig(**kw).validate()
