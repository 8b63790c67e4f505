"""Text conditioning: a Flan-T5 encoder in Flax NNX, its Hugging Face-exact tokenizer, loaders.

    from infinity_jax import text
    enc = text.TextEncoder.load("/models/flan-t5-xl")           # local Hugging Face folder
    feats, mask, lens = enc.encode(["a cat on a sofa"])         # (B, L, 2048) f32, (B, L), (B,)

Modules: :mod:`.t5` (model), :mod:`.convert` (checkpoints), :mod:`.tokenize` (tokenizer),
:mod:`.encoder` (bundle), :mod:`.precompute` (feature cache CLI), :mod:`.train_tokenizer`
(SentencePiece training and tiny random T5 folders).
"""
from infinity_jax.text.convert import load_model, save_pretrained
from infinity_jax.text.encoder import TextEncoder
from infinity_jax.text.t5 import PRESETS, Model, T5Config, load, preset
from infinity_jax.text.tokenize import MAX_LENGTH, T5Tokenizer, TokenBatch

__all__ = [
    "MAX_LENGTH", "PRESETS", "Model", "T5Config", "T5Tokenizer", "TextEncoder", "TokenBatch",
    "build_tiny_t5", "load", "load_model", "open_features", "preset", "save_pretrained", "train_sentencepiece",
]


def __getattr__(name):  # lazy: keeps `python -m infinity_jax.text.precompute` free of double imports
    if name in ("build_tiny_t5", "train_sentencepiece"):
        from infinity_jax.text import train_tokenizer  # noqa: PLC0415

        return getattr(train_tokenizer, name)
    if name == "open_features":
        from infinity_jax.text.precompute import open_features  # noqa: PLC0415

        return open_features
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
