"""The T5 feature store: caption features of a captions dataset in ArrayRecord files, written resumably.

Written by :func:`precompute` (the command is ``python -m infinity_jax.tools.precompute_text``) from
a JSONL captions file or a folder searched recursively for ``*.jsonl`` (Infinity's format: one JSON
object a line with ``image_path``, ``long_caption`` and optionally ``text``), with any encoder that
has ``encode(prompts) -> (features (B, L, C), mask, lens)``, ``tokenizer`` and ``model``
(:class:`infinity_jax.text.TextEncoder`). Features of ``X.jsonl`` go beside it into ``X.t5/``:

* ``meta.json``: model config, weights and tokenizer fingerprints, fields, storage dtype;
* ``part-NNNNN.array_record``: one record per (line, field), the valid rows only;
* ``progress.jsonl``: one line per *finished* part with the line ranges it covers and its keys.

A part is listed in ``progress.jsonl`` only once it is closed, so an interrupted run loses at most
the part in flight: a rerun deletes unlisted parts and encodes every line not yet listed
(lines appended to the JSONL later are picked up the same way).

Record layout: ``b"T5F1" | uint32 header size | JSON header | raw array bytes`` where the header
holds ``line``, ``field``, ``shape`` ``(n, C)`` (n = tokens incl. EOS), ``dtype`` and ``sha1``
(of the caption, first 16 hex digits). Read them with :func:`open_features`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

MAGIC = b"T5F1"
FORMAT_VERSION = 1
DEFAULT_FIELDS = ("long_caption", "text")
_PART = "part-{:05d}.array_record"


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes  # noqa: PLC0415

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def encode_record(line: int, field: str, caption: str, feats: np.ndarray) -> bytes:
    """Serialize one caption's features ``(n, C)``."""
    header = json.dumps({"line": int(line), "field": field, "shape": list(feats.shape), "dtype": feats.dtype.name,
                         "sha1": caption_sha1(caption)}).encode()
    return MAGIC + len(header).to_bytes(4, "little") + header + np.ascontiguousarray(feats).tobytes()


def decode_record(data: bytes) -> tuple[dict, np.ndarray]:
    """Inverse of :func:`encode_record`: (header dict, features ``(n, C)``)."""
    if data[:4] != MAGIC:
        raise ValueError("not a T5 feature record")
    size = int.from_bytes(data[4:8], "little")
    header = json.loads(data[8:8 + size])
    arr = np.frombuffer(data[8 + size:], dtype=_np_dtype(header["dtype"])).reshape(header["shape"])
    return header, arr


def caption_sha1(caption: str) -> str:
    return hashlib.sha1(caption.encode("utf-8")).hexdigest()[:16]


def feature_dir(jsonl: str | os.PathLike) -> pathlib.Path:
    """Where the features of ``X.jsonl`` live: ``X.t5/`` beside it."""
    jsonl = pathlib.Path(jsonl)
    return jsonl.with_name(jsonl.stem + ".t5")


def find_jsonl(data: str | os.PathLike) -> list[pathlib.Path]:
    """The JSONL captions files of ``data`` (a file, or a folder searched recursively)."""
    data = pathlib.Path(data)
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise FileNotFoundError(f"--data {data} does not exist")
    files = sorted(p for p in data.rglob("*.jsonl") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no .jsonl captions files under {data}")
    return files


def _ranges(lines: Sequence[int]) -> list[list[int]]:
    """Sorted ints -> half-open ranges ``[[a, b), ...]``."""
    out: list[list[int]] = []
    for i in sorted(lines):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def _read_progress(folder: pathlib.Path) -> list[dict]:
    path = folder / "progress.jsonl"
    if not path.exists():
        return []
    entries = []
    for raw in path.read_text().splitlines():
        try:
            entries.append(json.loads(raw))
        except json.JSONDecodeError:  # a line cut by a crash: its part is not finished
            continue
    return [e for e in entries if (folder / e["part"]).exists()]


def model_fingerprint(encoder) -> dict:
    """What identifies the features: model config, a weights digest, the tokenizer's sha1."""
    m = encoder.model
    digest = hashlib.sha1()
    digest.update(np.asarray(m.final_norm.scale[...], np.float32).tobytes())
    digest.update(np.asarray(m.embed[...][:8], np.float32).tobytes())
    digest.update(np.asarray(m.rel_bias[...], np.float32).tobytes())
    return {"config": dataclasses.asdict(m.cfg), "weights_sha1": digest.hexdigest()[:16],
            "tokenizer_sha1": hashlib.sha1(encoder.tokenizer.model_bytes).hexdigest()[:16],
            "max_length": encoder.max_length}


def _iter_captions(jsonl: pathlib.Path, fields: Sequence[str]) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """(line index, [(field, caption), ...]) for every line; blank lines give no captions."""
    with open(jsonl, encoding="utf-8") as f:
        for i, raw in enumerate(f):
            raw = raw.strip()
            if not raw:
                yield i, []
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"{jsonl}:{i + 1}: not valid JSON ({e})") from None
            yield i, [(k, row[k]) for k in fields if isinstance(row.get(k), str)]


def precompute_file(jsonl: str | os.PathLike, encoder, *, fields: Sequence[str] = DEFAULT_FIELDS,
                    batch_size: int = 32, part_lines: int = 4096, dtype: str = "bfloat16",
                    max_lines: int | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Encode the captions of one JSONL file into ``feature_dir(jsonl)``, skipping finished lines.

    Args:
      jsonl: the captions file.
      encoder: a :class:`~infinity_jax.text.encoder.TextEncoder`.
      fields: caption fields to encode (absent ones are skipped per line).
      batch_size: prompts per encoder call (prompts of a part are sorted by length first).
      part_lines: lines per ArrayRecord part (the unit of resumption).
      dtype: storage dtype: bfloat16, float16 or float32.
      max_lines: encode at most this many unfinished lines in this run (None: all).
      overwrite: discard existing features (needed when the model or settings changed).
      progress: show a tqdm bar.

    Returns:
      ``{"lines": lines finished now, "records": records written now, "skipped": lines already done}``.
    """
    from array_record.python.array_record_module import ArrayRecordWriter  # noqa: PLC0415

    jsonl = pathlib.Path(jsonl)
    out = feature_dir(jsonl)
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT_VERSION, "source": jsonl.name, "fields": list(fields), "dtype": dtype,
            **model_fingerprint(encoder)}
    meta_path = out / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != meta:
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise ValueError(f"{out} holds features made with other settings ({', '.join(diff)}); "
                             "pass overwrite=True (--overwrite) to recompute them")
    else:
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")

    entries = _read_progress(out)
    listed = {e["part"] for e in entries}
    for stale in out.glob("part-*.array_record"):
        if stale.name not in listed:  # a part cut short by an interruption
            stale.unlink()
    done = {i for e in entries for a, b in e["lines"] for i in range(a, b)}
    next_part = 1 + max((int(e["part"][5:10]) for e in entries), default=-1)

    pending = [(i, caps) for i, caps in _iter_captions(jsonl, fields) if i not in done]
    skipped = len(done)
    if max_lines is not None:
        pending = pending[:max_lines]
    store = _np_dtype(dtype)
    stats = {"lines": 0, "records": 0, "skipped": skipped}
    bar = tqdm(total=sum(len(c) for _, c in pending), unit="caption", desc=jsonl.name, disable=not progress)
    for start in range(0, len(pending), part_lines):
        chunk = pending[start:start + part_lines]
        items = [(i, k, c) for i, caps in chunk for k, c in caps]
        lengths = [len(encoder.tokenizer.encode_pieces(c)) for _, _, c in items]
        order = np.argsort(lengths, kind="stable")
        part = _PART.format(next_part)
        writer = ArrayRecordWriter(str(out / part), "group_size:1")
        keys = []
        for b in range(0, len(order), batch_size):
            batch = [items[j] for j in order[b:b + batch_size]]
            feats, _, lens = encoder.encode([c for _, _, c in batch])
            feats, lens = np.asarray(feats), np.asarray(lens)
            for (i, k, c), f, n in zip(batch, feats, lens):
                writer.write(encode_record(i, k, c, f[:n].astype(store)))
                keys.append([i, fields.index(k)])
            bar.update(len(batch))
        writer.close()
        with open(out / "progress.jsonl", "a") as f:
            f.write(json.dumps({"part": part, "lines": _ranges([i for i, _ in chunk]), "keys": keys}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        next_part += 1
        stats["lines"] += len(chunk)
        stats["records"] += len(keys)
    bar.close()
    return stats


def precompute(data: str | os.PathLike, encoder, **kw) -> dict[str, dict]:
    """:func:`precompute_file` for every JSONL file of ``data``; stats per file."""
    return {str(p): precompute_file(p, encoder, **kw) for p in find_jsonl(data)}


class FeatureReader:
    """Random access to the precomputed features of one JSONL file.

    ``reader.get(line, "long_caption")`` -> ``(n, C)`` array (storage dtype) or KeyError;
    ``(line, field) in reader``; ``reader.keys()``; ``reader.items()`` iterates everything.
    """

    def __init__(self, path: str | os.PathLike):
        path = pathlib.Path(path)
        self.folder = feature_dir(path) if path.suffix == ".jsonl" else path
        if not (self.folder / "meta.json").exists():
            raise FileNotFoundError(f"no precomputed T5 features in {self.folder}")
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.fields = self.meta["fields"]
        self._index: dict[tuple[int, str], tuple[str, int]] = {}
        self.lines_done: set[int] = set()
        for e in _read_progress(self.folder):
            for r, (line, fi) in enumerate(e["keys"]):
                self._index[(line, self.fields[fi])] = (e["part"], r)
            self.lines_done.update(i for a, b in e["lines"] for i in range(a, b))
        self._readers: dict = {}

    def _reader(self, part: str):
        if part not in self._readers:
            from array_record.python.array_record_module import ArrayRecordReader  # noqa: PLC0415

            self._readers[part] = ArrayRecordReader(str(self.folder / part))
        return self._readers[part]

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key) -> bool:
        return tuple(key) in self._index

    def keys(self) -> list[tuple[int, str]]:
        return sorted(self._index)

    def record(self, line: int, field: str = "long_caption") -> tuple[dict, np.ndarray]:
        """(header, features) of one caption."""
        part, r = self._index[(int(line), field)]
        return decode_record(self._reader(part).read([r])[0])

    def get(self, line: int, field: str = "long_caption") -> np.ndarray:
        """Features ``(n, C)`` of the caption ``field`` of JSONL line ``line`` (0-based)."""
        return self.record(line, field)[1]

    def items(self) -> Iterable[tuple[tuple[int, str], np.ndarray]]:
        for key in self.keys():
            yield key, self.get(*key)

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()

    def __enter__(self) -> "FeatureReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_features(path: str | os.PathLike) -> FeatureReader:
    """A :class:`FeatureReader` for ``X.jsonl`` (or its ``X.t5/`` folder)."""
    return FeatureReader(path)
