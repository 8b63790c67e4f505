"""Prompts -> T5 features: the tokenizer and the encoder bundled, compiled per padded length.

    enc = TextEncoder.load("/path/to/flan-t5-xl", dtype=jnp.bfloat16)
    feats, mask, lens = enc.encode(["a cat", "a dog on a sofa"])
    # feats (B, L, 2048) float32, zero where mask is False; mask (B, L) bool; lens (B,) int32

``L`` is the longest prompt (EOS included, at most 512) rounded up to a bucket, so only a few
shapes are ever compiled; ``jax.jit`` keeps one executable per (batch, bucket) shape.
"""
from __future__ import annotations

import bisect
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infinity_jax.text.t5 import Model, load
from infinity_jax.text.sentencepiece import MAX_LENGTH, T5Tokenizer, TokenBatch, pad_ids


class TextEncoder:
    """Tokenizer + T5 encoder.

    Args:
      tokenizer: the :class:`T5Tokenizer`.
      model: the T5 encoder :class:`Model`.
      bucket: pad lengths up to a multiple of this int, or to the smallest of these lengths that fits.
      max_length: truncation length, EOS included (Infinity: 512).
      batch_multiple: if set, pad the batch with dummy rows to a multiple of this (fewer compiles).

    The model's parameters are captured (``nnx.split``) here; to shard or replace them, update the
    model and build a new ``TextEncoder``, or assign ``encoder.state``.
    """

    def __init__(self, tokenizer: T5Tokenizer, model: Model, *, bucket: int | Sequence[int] = 32,
                 max_length: int = MAX_LENGTH, batch_multiple: int | None = None):
        self.tokenizer = tokenizer
        self.model = model
        positions = model.cfg.absolute_positions  # an encoder with absolute positions has a hard limit
        self.max_length = min(max_length, positions) if positions else max_length
        self.batch_multiple = batch_multiple
        if isinstance(bucket, int):
            self._multiple, self._buckets = bucket, None
        else:
            self._multiple, self._buckets = None, sorted(int(b) for b in bucket)
        graphdef, self.state = nnx.split(model)

        def forward(state, ids, mask):
            feats = nnx.merge(graphdef, state)(ids, mask)
            return jnp.where(mask[..., None], feats, 0.0)

        self._forward = jax.jit(forward)
        self.compiled_shapes: set[tuple[int, int]] = set()

    @classmethod
    def load(cls, folder: str | os.PathLike, *, dtype=jnp.float32, param_dtype=jnp.float32, **kw) -> "TextEncoder":
        """From a local Hugging Face T5 folder (``config.json``, ``spiece.model``, weights)."""
        model = load(folder, dtype=dtype, param_dtype=param_dtype)
        return cls(T5Tokenizer.from_folder(folder, max_length=kw.get("max_length", MAX_LENGTH)), model, **kw)

    @property
    def dim(self) -> int:
        """Feature width C (2048 for Flan-T5-XL)."""
        return self.model.cfg.d_model

    def padded_length(self, longest: int) -> int:
        """The bucket a batch whose longest row has ``longest`` tokens is padded to."""
        if self._buckets is not None:
            i = bisect.bisect_left(self._buckets, longest)
            padded = self._buckets[i] if i < len(self._buckets) else longest
        else:
            m = self._multiple or 1
            padded = -(-longest // m) * m
        positions = self.model.cfg.absolute_positions  # no padding past the learned positions
        return min(padded, max(positions, longest)) if positions else padded

    def tokenize(self, prompts: str | Sequence[str]) -> TokenBatch:
        """Token ids, mask and lens padded to this encoder's bucket."""
        batch = self.tokenizer(prompts, max_length=self.max_length)
        seqs = [row[:n].tolist() for row, n in zip(batch.ids, batch.lens)]
        return pad_ids(seqs, length=self.padded_length(int(batch.lens.max(initial=1))),
                       pad_id=self.tokenizer.pad_id)

    def encode_ids(self, ids: np.ndarray, mask: np.ndarray) -> jax.Array:
        """ids, mask (B, L) -> features (B, L, C) float32, zero at padded positions."""
        ids = np.asarray(ids, np.int32)
        mask = np.asarray(mask, bool)
        b = ids.shape[0]
        if self.batch_multiple and b % self.batch_multiple:
            extra = self.batch_multiple - b % self.batch_multiple
            pad_rows = np.zeros((extra, ids.shape[1]), np.int32)
            pad_rows[:, 0] = self.tokenizer.eos_id
            pad_mask = np.zeros((extra, ids.shape[1]), bool)
            pad_mask[:, 0] = True
            ids, mask = np.concatenate([ids, pad_rows]), np.concatenate([mask, pad_mask])
        self.compiled_shapes.add(ids.shape)
        return self._forward(self.state, jnp.asarray(ids), jnp.asarray(mask))[:b]

    def encode(self, prompts: str | Sequence[str]) -> tuple[jax.Array, jax.Array, jax.Array]:
        """prompts (B strings) -> (features (B, L, C) float32, mask (B, L) bool, lens (B,) int32)."""
        batch = self.tokenize(prompts)
        feats = self.encode_ids(batch.ids, batch.mask)
        return feats, jnp.asarray(batch.mask), jnp.asarray(batch.lens)

    __call__ = encode
