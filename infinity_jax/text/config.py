"""Hyper-parameters of the T5 v1.1 / Flan-T5 encoder and the public size presets."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import jax

#: Feed-forward activations by Hugging Face name.
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5 encoder (the subset of Hugging Face's ``T5Config`` it needs)."""

    vocab_size: int = 32128
    d_model: int = 2048
    d_kv: int = 64
    d_ff: int = 5120
    num_layers: int = 24
    num_heads: int = 32
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    #: Learned absolute position embeddings added to the token embeddings, for this many positions
    #: (0, as in T5: none). A pretrained T5's deep stack encodes word order through its relative
    #: attention biases; a two-layer encoder trained from nothing on short captions does not (its
    #: features are a bag of words: "a red circle and a blue square" ~ "a blue circle and a red
    #: square"), so the embedded demo's tiny encoder gets them.
    absolute_positions: int = 0

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def activation(self) -> str:
        """Activation name; 'gated-gelu' means the tanh approximation, as in Hugging Face."""
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]

    def __post_init__(self):
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} must be 'ACT' or 'gated-ACT'")
        if self.absolute_positions < 0:
            raise ValueError(f"absolute_positions must be >= 0, got {self.absolute_positions}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unsupported T5 activation {self.activation!r}; known: {sorted(ACTIVATIONS)}")

    @classmethod
    def from_dict(cls, d: dict) -> "T5Config":
        """From a Hugging Face ``config.json`` dict; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        aliases = {"hidden_size": "d_model", "num_attention_heads": "num_heads",
                   "num_hidden_layers": "num_layers", "head_dim": "d_kv"}
        kw = {}
        for k, v in d.items():
            k = aliases.get(k, k) if k not in names else k
            if k in names and v is not None:
                kw[k] = v
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "T5Config":
        return cls.from_dict(json.loads(pathlib.Path(path).read_text()))

    def to_dict(self) -> dict:
        """A Hugging Face compatible ``config.json`` dict (for an encoder-only T5)."""
        d = dataclasses.asdict(self)
        d.update(model_type="t5", architectures=["T5EncoderModel"], is_encoder_decoder=False,
                 dense_act_fn=self.activation, is_gated_act=self.is_gated, pad_token_id=0,
                 eos_token_id=1, use_cache=False)
        return d


#: Presets of the public T5 v1.1 / Flan-T5 sizes (vocab 32128 = 32000 pieces + 100 sentinels, rounded).
PRESETS: dict[str, T5Config] = {
    "flan-t5-small": T5Config(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6),
    "flan-t5-base": T5Config(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12),
    "flan-t5-large": T5Config(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16),
    "flan-t5-xl": T5Config(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32),
    "flan-t5-xxl": T5Config(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64),
}
for _size in ("small", "base", "large", "xl", "xxl"):
    PRESETS[_size] = PRESETS[f"flan-t5-{_size}"]
    PRESETS[f"t5-v1_1-{_size}"] = PRESETS[f"flan-t5-{_size}"]


def preset(name: str) -> T5Config:
    """A named config: 'small'..'xxl', 'flan-t5-xl', 't5-v1_1-base', ..."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown T5 preset {name!r}; known: {sorted(PRESETS)}") from None
