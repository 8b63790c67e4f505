r"""Precompute the T5 features of a captions dataset into its feature store, resumably.

    python -m infinity_jax.tools.precompute_text --data DIR --t5 FOLDER [--fields long_caption,text]

``DIR`` is a JSONL captions file or a folder searched recursively for ``*.jsonl``; the features of
``X.jsonl`` go beside it into ``X.t5/`` (format and reader: :mod:`infinity_jax.data.text_features`).
A rerun encodes only the lines not yet finished.
"""
from __future__ import annotations

import jax.numpy as jnp
from absl import app, flags

from infinity_jax.data.text_features import DEFAULT_FIELDS, precompute
from infinity_jax.text.encoder import TextEncoder

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def main(argv):  # pragma: no cover - thin CLI, exercised through precompute_file in tests
    del argv
    f = flags.FLAGS
    try:
        encoder = TextEncoder.load(f.t5, dtype=_DTYPES[f.compute_dtype], bucket=f.bucket)
        stats = precompute(f.data, encoder, fields=[x for x in f.fields.split(",") if x],
                           batch_size=f.batch_size, part_lines=f.part_lines, dtype=f.dtype,
                           max_lines=f.max_lines, overwrite=f.overwrite)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    for path, s in stats.items():
        print(f"{path}: {s['lines']} lines / {s['records']} captions encoded, {s['skipped']} lines already done")


def run() -> None:  # pragma: no cover - thin CLI
    """The ``infinity-precompute-text`` console script."""
    flags.DEFINE_string("data", None, "a JSONL captions file or a folder of them", required=True)
    flags.DEFINE_string("t5", None, "local Hugging Face T5 folder (config.json, spiece.model, weights)",
                        required=True)
    flags.DEFINE_string("fields", ",".join(DEFAULT_FIELDS), "comma-separated caption fields to encode")
    flags.DEFINE_integer("batch_size", 32, "prompts per encoder call")
    flags.DEFINE_integer("part_lines", 4096, "JSONL lines per ArrayRecord part (unit of resumption)")
    flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float16", "float32"], "storage dtype")
    flags.DEFINE_enum("compute_dtype", "bfloat16", ["bfloat16", "float16", "float32"], "encoder matmul dtype")
    flags.DEFINE_integer("bucket", 32, "pad token lengths to a multiple of this")
    flags.DEFINE_integer("max_lines", None, "encode at most this many unfinished lines, then stop")
    flags.DEFINE_bool("overwrite", False, "recompute features made with other settings")
    app.run(main)


if __name__ == "__main__":  # pragma: no cover
    run()
