"""Text conditioning: a Flan-T5 encoder in Flax NNX, its Hugging Face-exact tokenizer, loaders.

    from infinity_jax import text
    enc = text.TextEncoder.load("/models/flan-t5-xl")           # local Hugging Face folder
    feats, mask, lens = enc.encode(["a cat on a sofa"])         # (B, L, 2048) f32, (B, L), (B,)

Modules: :mod:`.config` (hyper-parameters, presets), :mod:`.t5` (model and its loader :func:`load`),
:mod:`.convert` (Hugging Face tensors and files), :mod:`.sentencepiece` (SentencePiece tokenizer),
:mod:`.encoder` (tokenizer + model). The feature store is :mod:`infinity_jax.data.text_features`;
SentencePiece training and tiny random T5 folders are :mod:`infinity_jax.tools.train_sentencepiece`.
"""
from infinity_jax.text.config import PRESETS, T5Config, preset
from infinity_jax.text.convert import save_pretrained
from infinity_jax.text.encoder import TextEncoder
from infinity_jax.text.t5 import Model, from_state_dict, load
from infinity_jax.text.sentencepiece import MAX_LENGTH, T5Tokenizer, TokenBatch

__all__ = [
    "MAX_LENGTH", "PRESETS", "Model", "T5Config", "T5Tokenizer", "TextEncoder", "TokenBatch",
    "from_state_dict", "load", "preset", "save_pretrained",
]

