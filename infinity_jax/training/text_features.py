"""Where the caption features come from: the frozen T5 encoder, a precomputed store, or random.

* ``random``: deterministic Gaussian features from a hash of the caption (smoke runs and tests);
  ``n = words + 1`` rows (EOS), capped at the text length.
* ``precomputed``: the record's own ``t5`` / ``t5_text`` arrays (written by
  ``infinity_jax.data.writer --t5_features``), else the ``X.t5/`` store of
  ``python -m infinity_jax.text.precompute`` looked up by the record's ``line`` and caption field.
* ``t5``: the frozen encoder (:class:`infinity_jax.text.TextEncoder`) runs on every batch's
  captions, padded to the fixed text length, ahead of the train step.

The first two are per-record functions called inside the data pipeline (a record without features
for its long caption is skipped for that batch; a missing short caption's features fall back to the
long caption's); the encoder works on whole batches in the trainer.
"""
from __future__ import annotations

import zlib

import numpy as np

from infinity_jax.data.records import CorruptRecord


class RandomText:
    def __init__(self, channels: int, max_len: int, scale: float = 0.2):
        self.channels, self.max_len, self.scale = int(channels), int(max_len), float(scale)

    def __call__(self, caption: str, example: dict, field: str) -> np.ndarray:
        n = min(len(caption.split()) + 1, self.max_len)
        rng = np.random.default_rng(zlib.crc32(caption.encode("utf-8")))
        return (rng.standard_normal((n, self.channels)) * self.scale).astype(np.float32)


class PrecomputedText:
    #: Features exist only for the record's stored captions (the pipeline picks long or short, never
    #: a derived caption).
    stored_features = True

    def __init__(self, channels: int, store: str | None = None):
        self.channels = int(channels)
        self.store_path = store or None
        self._store = None

    def _lookup(self, example: dict, field: str):
        if self.store_path is None or "line" not in example:
            return None
        if self._store is None:
            from infinity_jax.text.precompute import open_features  # noqa: PLC0415

            self._store = open_features(self.store_path)
        key = (int(example["line"]), field)
        return self._store.get(*key) if key in self._store else None

    def __call__(self, caption: str, example: dict, field: str) -> np.ndarray:
        feats = example.get("t5_text" if field == "text" else "t5")
        if feats is None:
            feats = self._lookup(example, field)
        if feats is None:
            raise CorruptRecord(f"no precomputed T5 features for the {field!r} caption")
        feats = np.asarray(feats, np.float32)
        if feats.ndim != 2 or feats.shape[1] != self.channels:
            raise CorruptRecord(f"precomputed T5 features have shape {feats.shape}; the model expects "
                                f"(n, {self.channels})")
        return feats

    def __getstate__(self):  # picklable for multiprocess workers
        d = dict(self.__dict__)
        d["_store"] = None
        return d


class OnlineT5:
    """Batches of captions -> (features (B, T, C) float32, mask (B, T) bool) with the frozen encoder."""

    def __init__(self, folder: str, max_len: int, dtype: str = "float32"):
        import jax.numpy as jnp  # noqa: PLC0415

        from infinity_jax.text import TextEncoder  # noqa: PLC0415

        self.encoder = TextEncoder.load(folder, dtype=jnp.dtype(dtype))
        self.max_len = int(max_len)

    @property
    def channels(self) -> int:
        return self.encoder.dim

    def __call__(self, captions) -> tuple[np.ndarray, np.ndarray]:
        tok = self.encoder.tokenizer(list(captions), length=self.max_len, max_length=self.max_len)
        feats = self.encoder.encode_ids(tok.ids, tok.mask)
        return np.asarray(feats, np.float32), np.asarray(tok.mask, bool)
