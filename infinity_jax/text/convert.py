"""Hugging Face T5 checkpoints <-> the tensors of :class:`infinity_jax.text.t5.Model`.

A local Hugging Face folder holds ``config.json``, ``spiece.model`` and the weights as one of
(searched in this order) ``model.safetensors.index.json`` + shards, ``model.safetensors``,
``pytorch_model.bin.index.json`` + shards, ``pytorch_model.bin``. Both ``T5EncoderModel`` and full
``T5ForConditionalGeneration`` checkpoints load: ``decoder.*`` and ``lm_head.*`` are ignored and
the input embedding is ``shared.weight`` (or ``encoder.embed_tokens.weight``, its tied copy).
Everything else must match the config exactly (see :func:`state_dict.check_keys`).

The model module builds the model and calls this one (:func:`infinity_jax.text.t5.load`); this one
imports only the config.

Layout: PyTorch ``Linear`` weights are ``(out, in)``; here ``q/k/v`` are ``(d_model, heads, d_kv)``,
``o`` is ``(heads, d_kv, d_model)``, FFN matrices are ``(in, out)``.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infinity_jax.state_dict import check_keys, check_values, load_state_dict
from infinity_jax.text.config import T5Config

WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors",
                "pytorch_model.bin.index.json", "pytorch_model.bin")
_IGNORED_PREFIXES = ("decoder.", "lm_head.")
_EMBED = "shared.weight"
_EMBED_ALIAS = "encoder.embed_tokens.weight"
SUPPORTED_MODEL_TYPES = ("t5", "mt5")


def _ident(a: np.ndarray) -> np.ndarray:
    return a


def _mapping(cfg: T5Config) -> list[tuple[tuple, str, tuple, Callable, Callable]]:
    """(nnx path, HF key, HF shape, hf->jax, jax->hf) for every parameter."""
    d, h, k, f = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff
    lin_in = (lambda w: w.T.reshape(d, h, k), lambda w: w.reshape(d, h * k).T)      # q, k, v
    lin_out = (lambda w: w.T.reshape(h, k, d), lambda w: w.reshape(h * k, d).T)     # o
    tr = (lambda w: w.T, lambda w: w.T)
    ident = (_ident, _ident)
    out = [
        (("embed",), _EMBED, (cfg.vocab_size, d), *ident),
        (("rel_bias",), "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
         (cfg.relative_attention_num_buckets, h), *ident),
        (("final_norm", "scale"), "encoder.final_layer_norm.weight", (d,), *ident),
    ]
    if cfg.absolute_positions:  # not in T5 (see T5Config.absolute_positions); saved under this key
        out.append((("pos_embed",), "encoder.embed_positions.weight", (cfg.absolute_positions, d), *ident))
    ffn = ("wi_0", "wi_1") if cfg.is_gated else ("wi",)
    for i in range(cfg.num_layers):
        pre = f"encoder.block.{i}.layer"
        out.append((("blocks", i, "attn_norm", "scale"), f"{pre}.0.layer_norm.weight", (d,), *ident))
        for name in ("q", "k", "v"):
            out.append((("blocks", i, "attn", name), f"{pre}.0.SelfAttention.{name}.weight", (h * k, d), *lin_in))
        out.append((("blocks", i, "attn", "o"), f"{pre}.0.SelfAttention.o.weight", (d, h * k), *lin_out))
        out.append((("blocks", i, "ffn_norm", "scale"), f"{pre}.1.layer_norm.weight", (d,), *ident))
        for name in ffn:
            out.append((("blocks", i, "ffn", name), f"{pre}.1.DenseReluDense.{name}.weight", (f, d), *tr))
        out.append((("blocks", i, "ffn", "wo"), f"{pre}.1.DenseReluDense.wo.weight", (d, f), *tr))
    return out


def expected_shapes(cfg: T5Config) -> dict[str, tuple]:
    """The Hugging Face encoder keys and PyTorch shapes a checkpoint for ``cfg`` must have."""
    return {key: shape for _, key, shape, _, _ in _mapping(cfg)}


def _wanted(key: str) -> bool:
    return not key.startswith(_IGNORED_PREFIXES)


def canonical_state(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop decoder / lm_head keys and fold the tied ``encoder.embed_tokens.weight`` into ``shared.weight``."""
    out = {k: v for k, v in state.items() if _wanted(k)}
    alias = out.pop(_EMBED_ALIAS, None)
    if alias is not None and _EMBED not in out:
        out[_EMBED] = alias
    return out


def find_weights(folder: str | os.PathLike) -> pathlib.Path:
    """The weights file (or shard index) of a Hugging Face folder; clear error when there is none."""
    folder = pathlib.Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    have = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise FileNotFoundError(
        f"no T5 weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}; the folder holds {have}")


def _read_safetensors(path: pathlib.Path, keep: Callable[[str], bool]) -> dict[str, np.ndarray]:
    """Read only the tensors whose key passes ``keep`` (skips the decoder of a full checkpoint)."""
    from safetensors import safe_open  # noqa: PLC0415

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    except (TypeError, ValueError):  # bfloat16 has no numpy dtype: let the generic reader convert it
        return {k: v for k, v in load_state_dict(path).items() if keep(k)}


def read_weights(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """The encoder tensors of a Hugging Face T5 folder as ``{key: array}`` (canonical names)."""
    path = find_weights(folder)
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        files = sorted({f for k, f in weight_map.items() if _wanted(k)})
        missing = [f for f in files if not (path.parent / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} lists shards that are missing: {missing}")
        paths = [path.parent / f for f in files]
    else:
        paths = [path]
    state: dict[str, np.ndarray] = {}
    for p in paths:
        if p.suffix == ".safetensors":
            state.update(_read_safetensors(p, _wanted))
        else:
            state.update({k: v for k, v in load_state_dict(p).items() if _wanted(k)})
    return canonical_state(state)


def read_config(folder: str | os.PathLike) -> T5Config:
    """The :class:`T5Config` of a Hugging Face folder's ``config.json``."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"T5 folder {folder} does not exist (a local Hugging Face model folder is needed)")
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; it must be a Hugging Face T5 model folder")
    raw = json.loads(path.read_text())
    model_type = raw.get("model_type", "t5")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported (need one of {SUPPORTED_MODEL_TYPES})")
    return T5Config.from_dict(raw)


def load_params(abstract, state: Mapping[str, np.ndarray], *, param_dtype=jnp.float32,
                what: str = "T5 checkpoint"):
    """The ``Model`` ``abstract`` (from ``nnx.eval_shape``) filled with Hugging Face tensors, keys and
    shapes checked strictly (the loader that builds it is :func:`infinity_jax.text.t5.load`).

    Raises:
      CheckpointMismatchError: naming every missing, unexpected and mis-shaped key.
    """
    cfg = abstract.cfg
    state = canonical_state(state)
    check_keys(what, state, expected_shapes(cfg))
    check_values(what, ((k, state[k]) for k in expected_shapes(cfg)))
    graphdef, abstract_state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(abstract_state))
    for path, key, _, to_jax, _ in _mapping(cfg):
        var = flat[path]
        value = np.asarray(to_jax(np.asarray(state[key], dtype=np.float32)))
        flat[path] = var.replace(jnp.asarray(value, dtype=param_dtype))
    leftover = [p for p, v in flat.items() if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
    if leftover:  # pragma: no cover - the mapping covers every parameter
        raise RuntimeError(f"parameters without a checkpoint entry: {leftover}")
    return nnx.merge(graphdef, nnx.from_flat_state(list(flat.items())))


def to_state_dict(model) -> dict[str, np.ndarray]:
    """The Hugging Face ``T5EncoderModel`` tensors (float32, PyTorch layout) of ``model``."""
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    return {key: np.ascontiguousarray(to_hf(np.asarray(flat[path].get_value(), dtype=np.float32)))
            for path, key, _, _, to_hf in _mapping(model.cfg)}


def save_pretrained(model, folder: str | os.PathLike, spiece_model: str | os.PathLike | bytes | None = None,
                    extra_files: Iterable[str | os.PathLike] = ()) -> pathlib.Path:
    """Write ``model`` as a Hugging Face ``T5EncoderModel`` folder (config.json + model.safetensors).

    ``spiece_model`` (a path or the serialized bytes) is written as ``spiece.model`` beside it.
    """
    from safetensors.numpy import save_file  # noqa: PLC0415

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    save_file(to_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    if spiece_model is not None:
        data = spiece_model if isinstance(spiece_model, bytes) else pathlib.Path(spiece_model).read_bytes()
        (folder / "spiece.model").write_bytes(data)
    for f in extra_files:
        f = pathlib.Path(f)
        (folder / f.name).write_bytes(f.read_bytes())
    return folder
