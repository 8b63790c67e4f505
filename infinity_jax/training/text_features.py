"""Where the caption features come from: the frozen T5 encoder, a precomputed store, or random.

* ``random``: deterministic Gaussian features from a hash of the caption (smoke runs and tests);
  ``n = words + 1`` rows (EOS), capped at the text length.
* ``precomputed``: the record's own ``t5`` / ``t5_text`` arrays (written by
  ``infinity_jax.data.writer --t5_features``), else the ``X.t5/`` store of
  ``python -m infinity_jax.tools.precompute_text`` looked up by the record's ``line`` and caption field.
* ``t5``: the frozen encoder (:class:`OnlineT5`) runs on every batch's captions, padded to the
  fixed text length, ahead of the train step, under the trainer's mesh: batch-sharded, in
  ``config.text.dtype`` (bfloat16 by default), its features never leaving the devices.

The first two are per-record functions called inside the data pipeline (a record without features
for its long caption is skipped for that batch; a missing short caption's features fall back to the
long caption's); the encoder works on whole batches in the trainer.
"""
from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from infinity_jax.data.records import CorruptRecord
from infinity_jax.data.text_features import open_features
from infinity_jax.sharding import make_mesh, state_shardings
from infinity_jax.text.t5 import load as load_t5
from infinity_jax.text.sentencepiece import T5Tokenizer


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
    """Batches of captions -> global (features (G, T, C), mask (G, T) bool) device arrays, from the
    frozen encoder run under the trainer's mesh.

    Each process tokenizes its own rows (padded to ``max_len``); the ids go to the devices split
    over the batch axes, the encoder runs batch-sharded (its parameters placed by the logical-axis
    rules, stored and computed in ``dtype``: bfloat16 on a pod), and the features stay on the
    devices, in ``dtype``, as the train step's input. Without a mesh: one device.
    """

    def __init__(self, folder: str, max_len: int, dtype: str = "float32", *, mesh=None,
                 batch_axes: tuple[str, ...] = ()):
        self.dtype = jnp.dtype(dtype)
        self.max_len = int(max_len)
        self.mesh = mesh if mesh is not None else make_mesh({"data": 1}, devices=jax.devices()[:1])
        self.tokenizer = T5Tokenizer.from_folder(folder, max_length=self.max_len)
        with jax.default_device(jax.local_devices(backend="cpu")[0]):
            model = load_t5(folder, dtype=self.dtype, param_dtype=self.dtype)
        self.config = model.cfg
        graphdef, state = nnx.split(model)
        shardings = state_shardings(state, self.mesh)
        # host copies, identical on every process, placed into the (possibly multi-process) shardings
        self.state = jax.device_put(jax.tree.map(np.asarray, state), shardings)
        self.batch_sharding = NamedSharding(self.mesh, P(tuple(batch_axes) or None))

        def forward(st, ids, mask):
            feats = nnx.merge(graphdef, st)(ids, mask)
            return jnp.where(mask[..., None], feats, 0).astype(self.dtype), mask

        self._forward = jax.jit(forward, in_shardings=(shardings, self.batch_sharding, self.batch_sharding),
                                out_shardings=(self.batch_sharding, self.batch_sharding))
        self.replicated = NamedSharding(self.mesh, P())
        self._forward_replicated = jax.jit(forward, in_shardings=(shardings, self.replicated, self.replicated),
                                           out_shardings=(self.replicated, self.replicated))

    @property
    def channels(self) -> int:
        return self.config.d_model

    def tokenize(self, captions) -> tuple[np.ndarray, np.ndarray]:
        """This process's captions -> ids (b, T) int32 and mask (b, T) bool, padded to ``max_len``."""
        tok = self.tokenizer(list(captions), length=self.max_len, max_length=self.max_len)
        return np.asarray(tok.ids, np.int32), np.asarray(tok.mask, bool)

    def __call__(self, captions):
        """This process's captions (its rows of the global batch) -> global device arrays."""
        ids, mask = self.tokenize(captions)
        ids = jax.make_array_from_process_local_data(self.batch_sharding, ids)
        mask = jax.make_array_from_process_local_data(self.batch_sharding, mask)
        return self._forward(self.state, ids, mask)

    def encode_host(self, captions) -> tuple[np.ndarray, np.ndarray]:
        """Captions that every process holds alike (e.g. a held-out set) -> host (features (n, T, C)
        float32, mask (n, T) bool), computed once on the mesh with replicated inputs."""
        ids, mask = self.tokenize(captions)
        put = lambda a: jax.make_array_from_callback(a.shape, self.replicated, lambda idx: a[idx])
        feats, m = self._forward_replicated(self.state, put(ids), put(mask))
        return (np.asarray(feats.addressable_data(0), np.float32), np.asarray(m.addressable_data(0), bool))
