r"""Write ArrayRecord shards from an image folder and a captions JSONL (the official data format).

    python -m infinity_jax.data.writer --captions data/captions.jsonl --images data/ --output shards/ \
        [--shard_size 2000] [--t5_features] [--no_verify]

``--captions`` is one JSONL file or a folder of them (the official ``{h_div_w}_{count}.jsonl``
layout). Each line is an object with ``image_path`` (relative to ``--images``, or absolute),
``long_caption``, optional ``text`` (short caption), ``h_div_w`` and any other fields (kept).

Output folder:

* ``shard-NNNNN-of-MMMMM.array_record``: one record per example (:mod:`infinity_jax.data.records`);
* ``h_div_w.npy``: the aspect ratio (height / width) of every record, in record order, read from the
  image header, so training can bucket by aspect ratio without decoding images;
* ``index.json``: counts per shard, the number of skipped lines and why.

Images are stored as their original encoded bytes (no re-encoding). With ``--verify`` (default) an
image that cannot be decoded, or a line without caption, is skipped and reported; with
``--no_verify`` it is written anyway (the training pipeline skips it then). ``--t5_features``
embeds the features precomputed by ``python -m infinity_jax.tools.precompute_text`` (the ``X.t5/`` folder
beside each JSONL) into the records.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Iterable, Iterator

import numpy as np
from absl import app, flags

from infinity_jax.data.records import CorruptRecord, decode_image, encode_example, image_size
from infinity_jax.data.text_features import open_features

INDEX = "index.json"
ASPECTS = "h_div_w.npy"
SHARD = "shard-{:05d}-of-{:05d}.array_record"

log = logging.getLogger(__name__)


def find_jsonl(path: str | os.PathLike) -> list[pathlib.Path]:
    p = pathlib.Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(p.rglob("*.jsonl"))
        if files:
            return files
    raise FileNotFoundError(f"no captions JSONL at {p}")


def _iter_lines(files: Iterable[pathlib.Path]) -> Iterator[tuple[pathlib.Path, int, dict | None, str | None]]:
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    yield f, line_no, json.loads(line), None
                except json.JSONDecodeError as e:
                    yield f, line_no, None, f"bad JSON: {e}"


def write_shards(captions: str | os.PathLike, images: str | os.PathLike | None, output: str | os.PathLike, *,
                 shard_size: int = 2000, verify: bool = True, t5_features: bool = False,
                 overwrite: bool = False) -> dict:
    """Write the shards; returns the index dict (also written to ``output/index.json``)."""
    from array_record.python.array_record_module import ArrayRecordWriter  # noqa: PLC0415

    files = find_jsonl(captions)
    images_root = pathlib.Path(images) if images else None
    out = pathlib.Path(output)
    if out.exists() and any(out.glob("shard-*.array_record")):
        if not overwrite:
            raise FileExistsError(f"{out} already holds shards; pass overwrite=True (--overwrite) to replace them")
        for f in out.glob("shard-*.array_record"):
            f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    readers = {}
    if t5_features:
        readers = {f: open_features(f) for f in files}

    # Pass 1: read lines, check images, collect what to write (bytes stay on disk until pass 2).
    entries, skipped = [], []
    for f, line_no, row, err in _iter_lines(files):
        where = f"{f.name}:{line_no + 1}"
        if err:
            skipped.append((where, err))
            continue
        path = row.get("image_path")
        if not path:
            skipped.append((where, "no image_path"))
            continue
        img_path = pathlib.Path(path)
        if not img_path.is_absolute() and images_root is not None:
            img_path = images_root / img_path
        if not isinstance(row.get("long_caption") or row.get("caption") or row.get("text"), str):
            skipped.append((where, "no caption"))
            continue
        if not img_path.is_file():
            skipped.append((where, f"missing image {img_path}"))
            continue
        entries.append((f, line_no, row, img_path))

    aspects, kept = [], 0
    writers: list = []
    tmp = out / "shard-{:05d}.tmp"

    for f, line_no, row, img_path in entries:
        where = f"{f.name}:{line_no + 1}"
        blob = img_path.read_bytes()
        try:
            h, w = image_size(blob)
            if verify:
                decode_image(blob)
        except CorruptRecord as e:
            if verify:
                skipped.append((where, str(e)))
                continue
            hw = row.get("h_div_w")
            h, w = (float(hw), 1.0) if hw else (1.0, 1.0)
        ex = {k: v for k, v in row.items() if k != "image_path"}
        ex.update(image=blob, image_path=str(path_rel(img_path, images_root)), line=line_no,
                  source=f.name, h_div_w=h / w)
        if readers:
            rd = readers[f]
            for field, key in (("long_caption", "t5"), ("text", "t5_text")):
                if (line_no, field) in rd:
                    ex[key] = rd.get(line_no, field)
        s = kept // shard_size
        if s == len(writers):
            writers.append(ArrayRecordWriter(str(tmp).format(s), "group_size:1"))
        writers[s].write(encode_example(ex))
        aspects.append(h / w)
        kept += 1
    for wr in writers:
        wr.close()
    for rd in readers.values():
        rd.close()
    shards = []
    for s in range(len(writers)):
        name = SHARD.format(s, len(writers))
        os.replace(str(tmp).format(s), out / name)
        shards.append({"file": name, "num_records": min(shard_size, kept - s * shard_size)})
    np.save(out / ASPECTS, np.asarray(aspects, np.float32))
    index = {"format": "infinity-jax/arrayrecord/1", "num_records": kept, "shards": shards,
             "num_skipped": len(skipped), "skipped": [{"where": w, "why": y} for w, y in skipped[:1000]],
             "t5_features": bool(readers)}
    (out / INDEX).write_text(json.dumps(index, indent=1))
    for w, y in skipped[:20]:
        log.warning("skipped %s: %s", w, y)
    log.info("wrote %d records in %d shards to %s (%d lines skipped)", kept, len(shards), out, len(skipped))
    return index


def path_rel(p: pathlib.Path, root: pathlib.Path | None) -> pathlib.Path:
    try:
        return p.relative_to(root) if root is not None else p
    except ValueError:
        return p


def main(argv):  # pragma: no cover - thin CLI (write_shards is tested)
    del argv

    F = flags.FLAGS
    try:
        idx = write_shards(F.captions, F.images, F.output, shard_size=F.shard_size, verify=F.verify,
                           t5_features=F.t5_features, overwrite=F.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {idx['num_records']} records in {len(idx['shards'])} shards to {F.output}; "
          f"{idx['num_skipped']} lines skipped")


def run() -> None:  # pragma: no cover - thin CLI
    """The ``infinity-write-shards`` console script."""
    flags.DEFINE_string("captions", None, "Captions JSONL file or folder of JSONL files.", required=True)
    flags.DEFINE_string("images", None, "Folder that image_path entries are relative to.")
    flags.DEFINE_string("output", None, "Output folder.", required=True)
    flags.DEFINE_integer("shard_size", 2000, "Records per shard.")
    flags.DEFINE_bool("verify", True, "Decode every image and skip the unreadable ones.")
    flags.DEFINE_bool("t5_features", False, "Embed precomputed T5 features (X.t5/ beside each JSONL).")
    flags.DEFINE_bool("overwrite", False, "Replace existing shards in --output.")
    app.run(main)


if __name__ == "__main__":  # pragma: no cover
    run()
