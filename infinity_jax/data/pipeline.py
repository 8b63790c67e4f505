"""The Grain input pipeline: any random-access source -> host-local batches of one template each.

    pipe = DataPipeline(source, buckets, global_batch=256, process_index=jax.process_index(),
                        process_count=jax.process_count(), text_fn=..., text_len=512)
    batch = next(pipe)          # dict of numpy arrays (see BatchLoader)
    state = pipe.get_state()    # JSON-able; pipe.set_state(state) resumes at the same batch

Grain graph: ``MapDataset.source(BatchPlan)`` (random access over global batches, see
:mod:`.bucketing`) ``.map_with_index(BatchLoader)`` (this host's rows: read, decode, resize, crop,
captions, text features) ``.to_iter_dataset(ReadOptions(num_threads, prefetch_buffer_size))`` and,
with ``workers > 0``, ``.mp_prefetch(...)``. The iterator's state is the next batch number, so it
is tiny and the same on every host.

A record that cannot be read or decoded (or whose text features are missing) is logged, counted in
``batch["skipped"]`` and replaced by the next readable record of the same template, so a batch
always has its full size and a corrupt file is never fatal. Only a record whose image cannot be
decoded is remembered and never read again; a text or read error may pass on a later visit.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence

import numpy as np

from infinity_jax.data.bucketing import BatchPlan, Bucket, EmptyDatasetError, assign_buckets, scan_aspect_ratios
from infinity_jax.data.captions import Caption, choose_caption, stored_caption
from infinity_jax.data.records import CorruptRecord, ImageDecodeError, captions_of, decode_image, resize_center_crop

log = logging.getLogger(__name__)

#: Largest source whose image headers are scanned for aspect ratios when it cannot tell them.
MAX_SCAN = 20_000_000

#: (caption, example, field) -> features (n, C); raises on failure (the record is skipped). A text
#: function whose ``stored_features`` is True only knows the record's own captions.
TextFn = Callable[[str, dict, str], np.ndarray]


class BatchLoader:
    """Loads this host's rows of a plan batch.

    Returns a dict: ``image`` (b, H, W, 3) uint8; ``caption`` (b,) object (str); ``index`` (b,)
    int64 record ids actually used; ``bucket`` int; ``batch`` int (plan index); ``skipped`` int;
    and with a ``text_fn``: ``text`` (b, text_len, C) float32 and ``text_mask`` (b, text_len) bool.

    Captions follow :mod:`infinity_jax.data.captions`: the official policy (``short_caption_prob``,
    ``dynamic_length``) for text encoded from the caption string, and the stored short/long choice
    for a ``text_fn`` with ``stored_features = True`` (precomputed features). A record is retired
    for good only when its image cannot be decoded; text and read errors skip it for this batch.
    """

    def __init__(self, source, plan: BatchPlan, buckets: Sequence[Bucket], *, process_index: int = 0,
                 process_count: int = 1, seed: int = 0, text_fn: TextFn | None = None,
                 text_len: int | None = None, short_caption_prob: float = 0.0, dynamic_length: bool = False,
                 max_tries: int = 64):
        self.source, self.plan, self.buckets = source, plan, list(buckets)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.local_batch = plan.global_batch // self.process_count
        self.seed = int(seed)
        self.text_fn, self.text_len = text_fn, text_len
        self.stored_features = bool(getattr(text_fn, "stored_features", False))
        self.short_caption_prob = float(short_caption_prob)
        self.dynamic_length = bool(dynamic_length)
        self.max_tries = int(max_tries)
        self.bad: set[int] = set()
        self._lock = threading.Lock()
        self.total_skipped = 0

    def caption(self, ex: dict, rng: np.random.Generator) -> Caption:
        """The caption of one record for this sample (see :mod:`infinity_jax.data.captions`)."""
        long, short = captions_of(ex)
        if self.stored_features:
            return stored_caption(long, short, rng, short_prob=self.short_caption_prob)
        return choose_caption(long, short, rng, short_prob=self.short_caption_prob,
                              dynamic_length=self.dynamic_length, long_type=ex.get("long_caption_type"))

    def _text(self, cap: Caption, ex: dict) -> np.ndarray:
        try:
            feats = np.asarray(self.text_fn(cap.text, ex, cap.field or "long_caption"))
        except CorruptRecord:
            if cap.field != "text":
                raise
            # stored short caption without features: the long caption's features instead
            long, _ = captions_of(ex)
            feats = np.asarray(self.text_fn(long, ex, "long_caption"))
        if feats.ndim != 2 or feats.shape[0] < 1:
            raise CorruptRecord(f"text features of shape {feats.shape}")
        return feats

    def _load_one(self, i: int, bucket: Bucket, rng: np.random.Generator) -> dict[str, Any]:
        ex = self.source[i]
        cap = self.caption(ex, rng)
        img = resize_center_crop(decode_image(ex.get("image")), *bucket.pixel)
        out = {"image": img, "caption": cap.text}
        if self.text_fn is not None:
            out["text"] = self._text(cap, ex)[: self.text_len]
        return out

    def _skip(self, i: int, err: Exception) -> None:
        with self._lock:
            if isinstance(err, ImageDecodeError):
                self.bad.add(i)
            self.total_skipped += 1
            total = self.total_skipped
        log.warning("skipping record %d (%s: %s); %d skipped so far on this host", i, type(err).__name__, err, total)

    def __call__(self, k: int, element: tuple[int, np.ndarray]) -> dict[str, Any]:
        bucket_id, ids = element
        bucket = self.buckets[bucket_id]
        lo = self.process_index * self.local_batch
        mine = [int(x) for x in ids[lo: lo + self.local_batch]]
        rows, used, skipped = [], [], 0
        for j, i in enumerate(mine):
            # caption choice seeded by the row's global position: the same data whatever the host count
            rng = np.random.default_rng((self.seed, 7, int(k), lo + j))
            candidates = [i] + self.plan.next_in_bucket(i, bucket_id, self.max_tries)
            for c in candidates:
                if c in self.bad:
                    if c == i:
                        skipped += 1  # known bad: still a skip of this sample
                    continue
                try:
                    rows.append(self._load_one(c, bucket, rng))
                    used.append(c)
                    break
                except Exception as e:  # noqa: BLE001 - never fatal: log, count, replace
                    self._skip(c, e)
                    skipped += 1
            else:
                raise RuntimeError(f"no readable record among {len(candidates)} candidates of template "
                                   f"{bucket.h_div_w} after record {i}: is the dataset corrupt?")
        batch = {"image": np.stack([r["image"] for r in rows]),
                 "caption": np.asarray([r["caption"] for r in rows], dtype=object),
                 "index": np.asarray(used, np.int64), "bucket": int(bucket_id), "batch": int(k),
                 "skipped": int(skipped)}
        if self.text_fn is not None:
            T = self.text_len
            C = rows[0]["text"].shape[1]
            text = np.zeros((len(rows), T, C), np.float32)
            mask = np.zeros((len(rows), T), bool)
            for j, r in enumerate(rows):
                n = r["text"].shape[0]
                text[j, :n] = r["text"]
                mask[j, :n] = True
            batch["text"], batch["text_mask"] = text, mask
        return batch


class DataPipeline:
    """Grain pipeline over a source (see the module docstring)."""

    def __init__(self, source, buckets: Sequence[Bucket], *, global_batch: int, process_index: int = 0,
                 process_count: int = 1, seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                 num_threads: int = 4, prefetch: int = 2, workers: int = 0, text_fn: TextFn | None = None,
                 text_len: int | None = None, short_caption_prob: float = 0.0, dynamic_length: bool = False,
                 aspect_cache: str | None = None):
        import grain  # noqa: PLC0415

        if len(source) == 0:
            raise EmptyDatasetError(f"the data source {source!r} is empty")
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
        if text_fn is not None and not text_len:
            raise ValueError("text_len is required with a text_fn")
        self.source, self.buckets = source, list(buckets)
        n = len(source)
        if len(self.buckets) == 1:  # one template: no per-record metadata (works for endless sources)
            self.bucket_ids = None
        else:
            aspects = source.aspect_ratios() if hasattr(source, "aspect_ratios") else None
            if aspects is None:
                if n > MAX_SCAN:
                    raise ValueError(f"the source has {n} records and no aspect_ratios(): use one template "
                                     f"(config.templates or a custom schedule) or give the source aspect_ratios()")
                aspects = scan_aspect_ratios(source, aspect_cache)
            self.bucket_ids = assign_buckets(aspects, self.buckets)
        self.plan = BatchPlan(self.bucket_ids, len(self.buckets), global_batch, seed=seed, shuffle=shuffle,
                              num_epochs=num_epochs, num_records=n)
        self.loader = BatchLoader(source, self.plan, self.buckets, process_index=process_index,
                                  process_count=process_count, seed=seed, text_fn=text_fn, text_len=text_len,
                                  short_caption_prob=short_caption_prob, dynamic_length=dynamic_length)
        ds = grain.MapDataset.source(self.plan).map_with_index(self.loader)
        prefetch = max(1, prefetch)  # batches read ahead, by up to that many threads
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, min(num_threads, prefetch)),
                                                  prefetch_buffer_size=prefetch))
        if workers > 0:
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
        self.dataset = ds
        self.iterator = iter(ds)

    @property
    def batches_per_epoch(self) -> int:
        return self.plan.batches_per_epoch

    def template_counts(self) -> dict[float, int]:
        """Records per template (h/w) in the source."""
        if self.bucket_ids is None:
            return {self.buckets[0].h_div_w: len(self.source)}
        return {b.h_div_w: int(np.sum(self.bucket_ids == i)) for i, b in enumerate(self.buckets)}

    def next_bucket(self) -> int:
        """Template id of the next batch (0 if the iterator state does not tell)."""
        k = self.get_state().get("next_index") if isinstance(self.get_state(), dict) else None
        return self.plan[k][0] if k is not None else 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self.iterator)

    def get_state(self) -> dict:
        return self.iterator.get_state()

    def set_state(self, state: dict) -> None:
        self.iterator.set_state(state)
