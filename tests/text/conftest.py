"""Shared fixtures of the text tests: a generated caption corpus, a SentencePiece model trained on
it, and a randomly initialised Hugging Face ``T5EncoderModel`` folder (built locally, no downloads)."""
import pathlib
import random

import pytest

WORDS = {
    "en": ("a photo of the cat dog sitting on red blue green chair table under bright sunlight painting "
           "style portrait landscape mountain river city night old young woman man wearing hat glass "
           "wooden house tree forest snow beach sunset golden reflection detailed realistic").split(),
    "fr": "café naïve résumé élève forêt château rivière crème brûlée garçon".split(),
    "de": "über straße größe schön mädchen fußball".split(),
    "ja": "東京 夜景 猫 犬 写真 富士山 日本 桜 寿司 山".split(),
    "zh": "中国 长城 熊猫 山水 画 城市 夜晚".split(),
}
ALL_WORDS = [w for ws in WORDS.values() for w in ws]

#: Tiny T5 used across the text tests (vocab_size is set from the trained SentencePiece model).
TINY = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu")


def make_corpus(n: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(ALL_WORDS) for _ in range(rng.randint(2, 18))]
        s = " ".join(words)
        if rng.random() < 0.2:
            s = s.capitalize() + rng.choice([".", ",", "!", "?", " 123", " 2024"])
        out.append(s)
    return out


@pytest.fixture(scope="session")
def tiny_kwargs() -> dict:
    return dict(TINY)


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="session")
def spiece_bytes(corpus) -> bytes:
    from infinity_jax.tools.train_sentencepiece import train_sentencepiece

    return train_sentencepiece(corpus, vocab_size=400)


@pytest.fixture(scope="session")
def tok_folder(tmp_path_factory, spiece_bytes) -> pathlib.Path:
    """A folder holding only spiece.model and a T5 config.json (what AutoTokenizer needs)."""
    import json

    folder = tmp_path_factory.mktemp("tok")
    (folder / "spiece.model").write_bytes(spiece_bytes)
    (folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
    return folder


def _n_pieces(spiece_bytes: bytes) -> int:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spiece_bytes)
    return len(proto.pieces)


@pytest.fixture(scope="session")
def hf_config(spiece_bytes):
    from transformers import T5Config

    return T5Config(vocab_size=_n_pieces(spiece_bytes) + 100, **TINY)


@pytest.fixture(scope="session")
def hf_model(hf_config):
    """A random ``transformers.T5EncoderModel`` in float32 eval mode."""
    import torch
    from transformers import T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(hf_config).float().eval()


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory, hf_model, spiece_bytes) -> pathlib.Path:
    """``hf_model`` saved with save_pretrained (safetensors) plus spiece.model."""
    folder = tmp_path_factory.mktemp("t5-tiny")
    hf_model.save_pretrained(folder)
    (folder / "spiece.model").write_bytes(spiece_bytes)
    return folder


@pytest.fixture(scope="session")
def shapes_captions() -> list[str]:
    """3,000 training captions of the ``shapes`` stream (the demo's text corpus)."""
    from infinity_jax.data.shapes import caption_stream

    return list(caption_stream(seed=0, stop=3000))


@pytest.fixture(scope="session")
def shapes_spiece(shapes_captions) -> bytes:
    """A 64-piece SentencePiece model of the shapes captions, one piece per word (as the demo trains it)."""
    from infinity_jax.tools.train_sentencepiece import train_sentencepiece

    words = sorted({w for c in shapes_captions for w in c.split()})
    return train_sentencepiece(shapes_captions + words * 50, 64)
