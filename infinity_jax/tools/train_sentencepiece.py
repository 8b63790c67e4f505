r"""Train a T5-style SentencePiece model on captions, and build tiny T5 folders from scratch.

For places with no pretrained weights (tests, an embedded demo): :func:`train_sentencepiece`
gives a Unigram model with T5's special ids (pad 0, eos 1, unk 2, no bos, ``nmt_nfkc``), and
:func:`build_tiny_t5` writes a Hugging Face compatible folder (``config.json``,
``model.safetensors``, ``spiece.model``) holding a randomly initialised encoder that both
:func:`infinity_jax.text.load` and ``transformers.T5EncoderModel`` can read.

    python -m infinity_jax.tools.train_sentencepiece --corpus captions.jsonl --out /tmp/tiny-t5 \
        --vocab_size 2000 [--tiny_model]
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
from typing import Iterable, Iterator

import numpy as np
from absl import app, flags

from infinity_jax.text.config import T5Config
from infinity_jax.text.convert import expected_shapes, save_pretrained
from infinity_jax.text.t5 import from_state_dict

#: Width/depth of the tiny encoder (vocab_size is set from the trained tokenizer).
TINY_CONFIG = T5Config(vocab_size=1100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                       feed_forward_proj="gated-gelu")


def train_sentencepiece(corpus: Iterable[str], vocab_size: int = 8000, *, output: str | os.PathLike | None = None,
                        character_coverage: float = 1.0, normalization: str = "nmt_nfkc",
                        num_threads: int = 1, input_sentence_size: int = 0, seed_sentencepiece_size: int = 1_000_000,
                        hard_vocab_limit: bool = False) -> bytes:
    """Train a T5-style Unigram SentencePiece model; returns the serialized model (and writes ``output``).

    Args:
      corpus: the training sentences (captions); empty ones are skipped.
      vocab_size: number of pieces (a soft limit unless ``hard_vocab_limit``: tiny corpora give fewer).
      output: where to write ``spiece.model`` (a file path, or a folder to put it in).
      character_coverage: 1.0 keeps every character seen (fine for small corpora; T5 used 0.9995-ish).
      normalization: SentencePiece normalisation rule (T5: ``nmt_nfkc``).
      num_threads: trainer threads (1 is deterministic).
      input_sentence_size: sample at most this many sentences (0: all).
    """
    import sentencepiece as spm  # noqa: PLC0415

    def sentences() -> Iterator[str]:
        for line in corpus:
            line = line.strip()
            if line:
                yield line

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences(), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=character_coverage, normalization_rule_name=normalization,
        num_threads=num_threads, input_sentence_size=input_sentence_size,
        shuffle_input_sentence=input_sentence_size > 0, seed_sentencepiece_size=seed_sentencepiece_size,
        hard_vocab_limit=hard_vocab_limit, byte_fallback=False, minloglevel=2)
    data = buf.getvalue()
    if output is not None:
        out = pathlib.Path(output)
        if out.is_dir() or not out.suffix:
            out.mkdir(parents=True, exist_ok=True)
            out = out / "spiece.model"
        out.write_bytes(data)
    return data


def captions_from_jsonl(path: str | os.PathLike, fields: Iterable[str] = ("long_caption", "text")) -> Iterator[str]:
    """The caption strings of a JSONL captions file (every listed field that is present)."""
    fields = tuple(fields)
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            for k in fields:
                if isinstance(row.get(k), str):
                    yield row[k]


def build_tiny_t5(folder: str | os.PathLike, corpus: Iterable[str] | None = None, *,
                  spiece_model: bytes | str | os.PathLike | None = None, vocab_size: int = 1000,
                  config: T5Config | None = None, seed: int = 0, extra_ids: int = 100) -> pathlib.Path:
    """Write a randomly initialised T5 encoder folder loadable by :func:`infinity_jax.text.load`.

    Either trains a tokenizer on ``corpus`` or uses ``spiece_model``. The config (default
    :data:`TINY_CONFIG`) gets ``vocab_size = pieces + extra_ids``.
    """
    from sentencepiece import sentencepiece_model_pb2  # noqa: PLC0415

    if spiece_model is None:
        if corpus is None:
            raise ValueError("build_tiny_t5 needs a corpus or a spiece_model")
        spiece_model = train_sentencepiece(corpus, vocab_size)
    elif not isinstance(spiece_model, bytes):
        spiece_model = pathlib.Path(spiece_model).read_bytes()
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spiece_model)
    cfg = dataclasses.replace(config or TINY_CONFIG, vocab_size=len(proto.pieces) + extra_ids)
    model = from_state_dict(random_state_dict(cfg, seed), cfg, what="random T5")
    return save_pretrained(model, folder, spiece_model=spiece_model)


def random_state_dict(cfg: T5Config, seed: int = 0) -> dict:
    """Hugging Face-layout encoder tensors with T5's (Mesh TensorFlow) init, drawn with numpy.

    (numpy is used rather than ``Model(cfg, rngs=...)`` only because it is instant on CPU.)
    """
    rng = np.random.default_rng(seed)
    d, f, hk = cfg.d_model, cfg.d_ff, cfg.num_heads * cfg.d_kv
    std = {"shared": 1.0, "embed_positions": 1.0, "relative_attention_bias": d ** -0.5, ".q.": (d * cfg.d_kv) ** -0.5,
           ".k.": d ** -0.5, ".v.": d ** -0.5, ".o.": hk ** -0.5, ".wi": d ** -0.5, ".wo.": f ** -0.5}
    out = {}
    for key, shape in expected_shapes(cfg).items():
        if "layer_norm" in key:
            out[key] = np.ones(shape, np.float32)
            continue
        scale = next(v for k, v in std.items() if k in key)
        out[key] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return out


def main(argv):  # pragma: no cover - thin CLI
    del argv
    f = flags.FLAGS
    src = pathlib.Path(f.corpus)
    if not src.is_file():
        raise SystemExit(f"error: --corpus {src} is not a file")
    corpus = (captions_from_jsonl(src) if src.suffix == ".jsonl"
              else (ln for ln in open(src, encoding="utf-8")))
    if f.tiny_model:
        build_tiny_t5(f.out, corpus, vocab_size=f.vocab_size, seed=f.seed)
    else:
        train_sentencepiece(corpus, f.vocab_size, output=f.out, input_sentence_size=f.input_sentence_size,
                            num_threads=f.num_threads)
    print(f"wrote {f.out}")


def run() -> None:  # pragma: no cover - thin CLI
    """The ``infinity-train-sentencepiece`` console script."""
    flags.DEFINE_string("corpus", None, "a .jsonl captions file or a text file (one sentence a line)", required=True)
    flags.DEFINE_string("out", None, "output folder (spiece.model, plus the model with --tiny_model)", required=True)
    flags.DEFINE_integer("vocab_size", 8000, "SentencePiece vocabulary size (soft limit)")
    flags.DEFINE_integer("input_sentence_size", 0, "sample this many sentences (0: all)")
    flags.DEFINE_integer("num_threads", 1, "trainer threads")
    flags.DEFINE_bool("tiny_model", False, "also write a randomly initialised tiny T5 encoder")
    flags.DEFINE_integer("seed", 0, "init seed of the tiny model")
    app.run(main)


if __name__ == "__main__":  # pragma: no cover
    run()
