"""Random-access source over ArrayRecord shards written by :mod:`infinity_jax.data.writer`.

``ArrayRecordSource(folder)`` reads ``folder/index.json`` (shard list) and ``h_div_w.npy`` (aspect
ratios for bucketing); a glob pattern or a list of ``.array_record`` files works too (then aspect
ratios come from a header scan). ``src[i]`` returns the decoded example dict; a record whose bytes
cannot be parsed raises :class:`~infinity_jax.data.records.CorruptRecord` (the pipeline skips it).
"""
from __future__ import annotations

import glob
import json
import os
import pathlib
from typing import Sequence

import numpy as np

from infinity_jax.data.records import CorruptRecord, decode_example
from infinity_jax.data.writer import ASPECTS, INDEX


class ArrayRecordSource:
    def __init__(self, path: str | os.PathLike | Sequence[str]):
        import grain  # noqa: PLC0415

        self._aspects = None
        if isinstance(path, (list, tuple)):
            files = [str(p) for p in path]
        else:
            p = pathlib.Path(path)
            if p.is_dir():
                if (p / INDEX).exists():
                    index = json.loads((p / INDEX).read_text())
                    files = [str(p / s["file"]) for s in index["shards"]]
                    if (p / ASPECTS).exists():
                        self._aspects = np.load(p / ASPECTS).astype(np.float64)
                else:
                    files = sorted(str(f) for f in p.glob("*.array_record"))
            else:
                files = sorted(glob.glob(str(p)))
        if not files:
            raise FileNotFoundError(f"no ArrayRecord shards at {path}")
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"missing ArrayRecord shards: {', '.join(missing[:5])}")
        self.files = files
        self._src = grain.sources.ArrayRecordDataSource(files)
        if self._aspects is not None and len(self._aspects) != len(self._src):
            self._aspects = None  # stale index: fall back to a scan

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i: int) -> dict:
        try:
            data = self._src[int(i)]
        except Exception as e:  # noqa: BLE001 - unreadable chunk: a corrupt record, not a crash
            raise CorruptRecord(f"cannot read record {i}: {e}") from e
        return decode_example(data)

    def aspect_ratios(self) -> np.ndarray | None:
        return self._aspects

    def __repr__(self) -> str:
        return f"ArrayRecordSource({len(self.files)} shards, {len(self)} records)"
