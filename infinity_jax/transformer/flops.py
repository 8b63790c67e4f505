"""Analytic parameter and FLOP counts of the Infinity transformer.

FLOPs count one multiply-add as 2 FLOPs and include only matrix products (projections,
attention scores and weighted sums); norms, activations and softmax are ignored, as in
MaxText's MFU accounting. Self-attention is block-causal: a query of scale k attends to all
tokens of scales <= k.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from infinity_jax.transformer.config import InfinityConfig


def param_count(cfg: InfinityConfig) -> int:
    """Number of trainable parameters (buffers excluded), from the module definitions."""
    C, Ct, V, M, H = cfg.embed_dim, cfg.text_channels, cfg.vocab, cfg.mlp_hidden, cfg.num_heads
    d = cfg.token_bits
    glob = (cfg.text_maxlen * Ct + C + Ct  # cfg_uncond, pos_start, text_norm
            + C + Ct * 2 * C + C + C * C + C  # pool: mat_q (1*Hp*C/Hp), mat_kv, v_bias, proj
            + Ct * C + C + C * C + C  # text_proj_for_ca
            + cfg.num_levels * C + d * C + C  # lvl_embed, word_embed
            + C * 6 * C + 6 * C  # shared_ada_lin
            + C * 2 * C + 2 * C + C * V + V)  # head_nm, head
    block = (6 * C + H + 2 * C + 3 * C * C + C * C + C  # ada_gss, scale_mul, q/v bias, qkv, proj
             + C + C * C + C + 2 * C * C + C * C + C  # ca: v_bias, mat_q, mat_kv, proj
             + C * M + M + M * C + C  # ffn
             + 2 * C)  # ca_norm
    return int(glob + cfg.depth * block)


def forward_flops(cfg: InfinityConfig, scales: Sequence[Sequence[int]], text_len: int = 77) -> dict:
    """Forward FLOPs for one image (no CFG) over ``scales`` with a caption of ``text_len`` tokens.

    Returns a dict with the total and its parts (text, blocks' dense, attention, head).
    """
    C, Ct, V, M = cfg.embed_dim, cfg.text_channels, cfg.vocab, cfg.mlp_hidden
    d = cfg.token_bits
    sizes = [int(s[-2]) * int(s[-1]) for s in scales]
    L = int(sum(sizes))
    T = int(text_len)
    text = 2 * T * Ct * 2 * C + 2 * 1 * T * C * 2 + 2 * C * C + 2 * T * Ct * C + 2 * T * C * C
    # per block, per token: qkv, proj, ca_q, ca_proj, ffn; per image: ca k/v of the text
    dense_tok = 2 * C * 3 * C + 2 * C * C + 2 * C * C + 2 * C * C + 2 * 2 * C * M
    dense = cfg.depth * (L * dense_tok + 2 * T * C * 2 * C)
    attn = self_attention_flops(cfg, scales) + cfg.depth * 2 * 2 * C * L * T
    head = L * (2 * d * C + 2 * C * V) + 2 * C * 6 * C + 2 * C * 2 * C
    total = text + dense + attn + head
    return {"total": float(total), "text": float(text), "dense": float(dense), "attention": float(attn),
            "head": float(head), "tokens": L}


def self_attention_flops(cfg: InfinityConfig, scales: Sequence[Sequence[int]]) -> float:
    """Forward FLOPs of the block-causal self-attention (scores + weighted sum) for one image."""
    sizes = [int(s[-2]) * int(s[-1]) for s in scales]
    visible = np.cumsum(sizes)  # keys visible to a query of scale k
    sa_pairs = int(sum(n * v for n, v in zip(sizes, visible)))
    return float(cfg.depth * 2 * 2 * cfg.embed_dim * sa_pairs)


def train_flops(cfg: InfinityConfig, scales, text_len: int = 77) -> float:
    """Forward + backward FLOPs per image (3x forward)."""
    return 3.0 * forward_flops(cfg, scales, text_len)["total"]
