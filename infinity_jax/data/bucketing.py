"""Aspect-ratio bucketing onto the official templates, and the per-epoch batch plan.

Every batch holds images of one aspect-ratio template (one scale schedule, one image size), as in
the official trainer. The plan is made from the records' aspect ratios alone (no decoding):

* each record goes to the nearest allowed template (:func:`assign_buckets`);
* for epoch ``e`` the records of each template are shuffled with ``(seed, e)``, cut into
  *global* batches (the remainder is dropped), and the batches of all templates are shuffled
  together, so templates appear in proportion to their share of the data;
* batch ``k`` of the plan is the same on every host; host ``p`` of ``P`` loads rows
  ``[p*B/P, (p+1)*B/P)`` of it. Hence every host runs the same template (the same compiled program)
  at the same step, and the only state needed to resume is the next batch number.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from infinity_jax import schedules
from infinity_jax.data.records import image_size

log = logging.getLogger(__name__)


class EmptyDatasetError(ValueError):
    """The dataset cannot fill a single global batch."""


@dataclasses.dataclass(frozen=True)
class Bucket:
    """One aspect-ratio template: its h/w, the transformer's scale schedule and the image size."""

    h_div_w: float
    scales: tuple[tuple[int, int, int], ...]
    pixel: tuple[int, int]  # (height, width)

    @property
    def seq_len(self) -> int:
        return schedules.sequence_length(self.scales)


def make_buckets(pn: str | None = "0.06M", templates: Sequence[float] | None = None,
                 schedule: Sequence[Sequence[int]] | None = None, token_stride: int = schedules.VAE_STRIDE
                 ) -> list[Bucket]:
    """The buckets of a run.

    Args:
      pn: official resolution name; every template's schedule is its prefix (ignored with ``schedule``).
      templates: allowed h/w templates (default: all 15); each must be an official template.
      schedule: a custom schedule ``((h, w) | (t, h, w), ...)`` instead of the official tables: one
        bucket, whose template is the nearest official one to the last grid's h/w.
      token_stride: pixels per transformer token (16).
    """
    if schedule is not None:
        scales = schedules.normalize_schedule(schedule)
        h, w = scales[-1][1:]
        return [Bucket(h / w, scales, (h * token_stride, w * token_stride))]
    chosen = list(schedules.H_DIV_W_TEMPLATES) if not templates else [float(t) for t in templates]
    out = []
    for t in chosen:
        s = schedules.get_schedule(t, pn)  # raises ScheduleError for a bad template or pn
        h, w = s.scales[-1][1:]
        out.append(Bucket(t, s.scales, (h * token_stride, w * token_stride)))
    return out


def assign_buckets(aspects: np.ndarray, buckets: Sequence[Bucket]) -> np.ndarray:
    """Index of the nearest bucket (absolute h/w difference) per record; NaN goes to bucket 0."""
    a = np.asarray(aspects, np.float64)
    t = np.asarray([b.h_div_w for b in buckets])
    ids = np.argmin(np.abs(np.nan_to_num(a, nan=t[0])[:, None] - t[None, :]), axis=1)
    return ids.astype(np.int32)


def scan_aspect_ratios(source, cache: str | os.PathLike | None = None, threads: int = 8) -> np.ndarray:
    """h/w of every record of ``source`` from image headers (NaN where unreadable), cached to ``cache``."""
    if cache is not None and pathlib.Path(cache).exists():
        arr = np.load(cache)
        if len(arr) == len(source):
            return arr
    n = len(source)
    log.warning("scanning %d image headers for aspect ratios (cache: %s)", n, cache)

    def one(i):
        try:
            h, w = image_size(source[i]["image"])
            return h / w
        except Exception:  # noqa: BLE001 - the pipeline reports the record when it loads it
            return np.nan

    with ThreadPoolExecutor(threads) as ex:
        arr = np.fromiter(ex.map(one, range(n)), np.float64, count=n)
    if cache is not None:
        pathlib.Path(cache).parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, arr)
    return arr


class BatchPlan:
    """Deterministic global batches, one template each (see the module docstring).

    ``plan[k]`` -> ``(bucket id, global record ids (global_batch,))`` for batch k of the whole run
    (epoch ``k // batches_per_epoch``).

    With ``bucket_ids=None`` every record is in bucket 0 and nothing per record is materialised
    (``num_records`` may be huge, e.g. an endless procedural source): epoch ``e`` is the
    permutation ``grain.experimental.index_shuffle(i, seed=(seed, e))`` of ``range(num_records)``.
    """

    def __init__(self, bucket_ids: np.ndarray | None, num_buckets: int, global_batch: int, *, seed: int = 0,
                 shuffle: bool = True, num_epochs: int | None = None, num_records: int | None = None):
        self.global_batch = int(global_batch)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        if bucket_ids is None:
            if num_records is None:
                raise ValueError("num_records is required without bucket_ids")
            self.uniform, self.num_records = True, int(num_records)
            self.bucket_ids, self.members = None, None
            self.batches_per_bucket = [self.num_records // self.global_batch]
            counts = [self.num_records]
        else:
            self.uniform = False
            self.bucket_ids = np.asarray(bucket_ids, np.int32)
            self.num_records = len(self.bucket_ids)
            self.members = [np.flatnonzero(self.bucket_ids == b).astype(np.int64) for b in range(num_buckets)]
            self.batches_per_bucket = [len(m) // self.global_batch for m in self.members]
            counts = [len(m) for m in self.members]
        self.batches_per_epoch = int(sum(self.batches_per_bucket))
        if self.batches_per_epoch == 0:
            sizes = ", ".join(f"{c}" for c in counts if c)
            raise EmptyDatasetError(
                f"the dataset ({self.num_records} records; per template: {sizes or 'none'}) cannot fill one "
                f"global batch of {self.global_batch} images of one aspect-ratio template")
        self.num_epochs = num_epochs
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.batches_per_epoch * (self.num_epochs if self.num_epochs else 1_000_000)

    def _epoch_seed(self, e: int) -> int:
        return (self.seed * 1_000_003 + e * 7_919 + 12_345) % (2 ** 31 - 1)

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(bucket id per batch (nb,), record ids (nb, global_batch)) of epoch ``e`` (not in uniform mode)."""
        with self._lock:
            if e in self._cache:
                return self._cache[e]
        rng = np.random.default_rng((self.seed, e))
        G = self.global_batch
        buckets, rows = [], []
        for b, m in enumerate(self.members):
            nb = self.batches_per_bucket[b]
            if not nb:
                continue
            ids = rng.permutation(m) if self.shuffle else m
            rows.append(ids[: nb * G].reshape(nb, G))
            buckets.append(np.full(nb, b, np.int32))
        buckets, rows = np.concatenate(buckets), np.concatenate(rows)
        order = rng.permutation(len(buckets)) if self.shuffle else np.argsort(rows[:, 0], kind="stable")
        out = (buckets[order], rows[order])
        with self._lock:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            self._cache[e] = out
        return out

    def __getitem__(self, k: int) -> tuple[int, np.ndarray]:
        e, j = divmod(int(k), self.batches_per_epoch)
        if self.uniform:
            G = self.global_batch
            pos = range(j * G, (j + 1) * G)
            if not self.shuffle:
                return 0, np.arange(j * G, (j + 1) * G, dtype=np.int64)
            from grain.experimental import index_shuffle  # noqa: PLC0415

            seed = self._epoch_seed(e)
            return 0, np.asarray([index_shuffle(i, max_index=self.num_records - 1, seed=seed, rounds=4)
                                  for i in pos], np.int64)
        buckets, rows = self.epoch(e)
        return int(buckets[j]), rows[j]

    def next_in_bucket(self, record: int, bucket: int, tries: int) -> list[int]:
        """Up to ``tries`` records of ``bucket`` following ``record`` (cyclic): replacement candidates."""
        if self.uniform:
            n = self.num_records
            return [int((record + 1 + t) % n) for t in range(min(tries, n - 1))]
        m = self.members[bucket]
        if len(m) <= 1:
            return []
        pos = int(np.searchsorted(m, record))
        idx = (pos + 1 + np.arange(min(tries, len(m) - 1))) % len(m)
        return [int(x) for x in m[idx]]
