"""Inference checkpoints: one folder with the transformer, the tokenizer, the text encoder and configs.

Layout::

    DIR/infinity_config.json   {"format", "transformer": InfinityConfig, "tokenizer": VAEConfig,
                                "text_encoder": "text_encoder" | null, "sampling": {...defaults}}
    DIR/transformer/           Orbax (StandardCheckpointer) of the transformer parameters
    DIR/tokenizer/             Orbax of the BSQ-VAE parameters
    DIR/text_encoder/          optional Hugging Face T5 folder (config.json, spiece.model, weights)

``python -m infinity_jax.convert`` writes it from official files; the trainer can export it; the
``generate`` command, the notebook and :class:`~infinity_jax.sampling.pipeline.Pipeline` read it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from infinity_jax.sharding import state_shardings
from infinity_jax.state_dict import CheckpointMismatchError
from infinity_jax.tokenizer.vae import BSQVAE, VAEConfig
from infinity_jax.transformer.config import InfinityConfig
from infinity_jax.transformer.model import Infinity

FORMAT = "infinity-jax/1"
CONFIG_NAME = "infinity_config.json"


class BundleError(ValueError):
    """A checkpoint folder that is missing, incomplete or inconsistent with its config."""


def _checkpointer():
    import orbax.checkpoint as ocp  # noqa: PLC0415

    return ocp.StandardCheckpointer()


def _pure(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def save_params(model: nnx.Module, directory: str | os.PathLike) -> None:
    """Save a module's parameters (Orbax) to ``directory`` (overwritten)."""
    directory = pathlib.Path(directory).absolute()
    if directory.exists():
        shutil.rmtree(directory)
    ck = _checkpointer()
    ck.save(str(directory), _pure(model))
    ck.wait_until_finished()


def restore_params(model: nnx.Module, directory: str | os.PathLike, what: str, shardings=None) -> nnx.Module:
    """Fill ``model`` (concrete or abstract from ``nnx.eval_shape``) from ``directory``.

    Shapes are checked against the stored metadata first, so a checkpoint that does not match
    the config fails with a :class:`CheckpointMismatchError` naming every differing array.
    ``shardings``: a pytree like the pure state of NamedShardings (restore straight into them).
    """
    directory = pathlib.Path(directory).absolute()
    if not directory.exists():
        raise BundleError(f"{what}: {directory} does not exist")
    ck = _checkpointer()
    try:
        meta = ck.metadata(str(directory))
    except Exception as e:  # noqa: BLE001 - Orbax raises many kinds for a damaged folder
        raise BundleError(f"{what}: cannot read the checkpoint metadata in {directory} (damaged?): "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}") from None
    stored = getattr(meta, "item_metadata", meta)
    stored = getattr(stored, "tree", stored)
    state = nnx.state(model, nnx.Param)
    want = nnx.to_pure_dict(state)
    flat_w = {"/".join(map(str, k)): v for k, v in _flatten(want)}
    flat_s = {"/".join(map(str, k)): v for k, v in _flatten(stored)}
    missing = sorted(set(flat_w) - set(flat_s))
    unexpected = sorted(set(flat_s) - set(flat_w))
    mismatched = sorted((k, tuple(flat_s[k].shape), tuple(flat_w[k].shape)) for k in set(flat_w) & set(flat_s)
                        if tuple(flat_s[k].shape) != tuple(flat_w[k].shape))
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(f"{what} checkpoint {directory}", missing, unexpected, mismatched)
    target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), want)
    if shardings is not None:
        target = jax.tree.map(lambda t, s: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=s), target, shardings)
    try:
        restored = ck.restore(str(directory), target)
    except Exception as e:  # noqa: BLE001 - a truncated or missing array file
        ck.close()  # stop Orbax's threads now, not noisily at interpreter exit
        detail = str(e).split(" See full TensorStore details")[0].splitlines()[0][:300] if str(e) else ""
        raise BundleError(f"{what}: cannot read the parameters in {directory} (damaged or truncated file?): "
                          f"{type(e).__name__}: {detail}") from None
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model


def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (k,))
    else:
        yield prefix, tree


def save(directory: str | os.PathLike, transformer, tokenizer, *, text_encoder_folder: str | os.PathLike | None = None,
         sampling: dict | None = None, extra: dict | None = None) -> pathlib.Path:
    """Write an inference checkpoint folder."""
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    save_params(transformer, directory / "transformer")
    save_params(tokenizer, directory / "tokenizer")
    text_name = None
    if text_encoder_folder is not None:
        src = pathlib.Path(text_encoder_folder)
        if src.resolve() != (directory / "text_encoder").resolve():
            shutil.copytree(src, directory / "text_encoder", dirs_exist_ok=True)
        text_name = "text_encoder"
    cfg = {
        "format": FORMAT,
        "transformer": dataclasses.asdict(transformer.cfg),
        # the token layout is the transformer's (see load)
        "tokenizer": {**dataclasses.asdict(tokenizer.config),
                      "apply_spatial_patchify": transformer.cfg.apply_spatial_patchify},
        "text_encoder": text_name,
        "sampling": sampling or {},
        **(extra or {}),
    }
    (directory / CONFIG_NAME).write_text(json.dumps(cfg, indent=1, default=list))
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise BundleError(f"checkpoint folder {directory} does not exist")
    path = directory / CONFIG_NAME
    if not path.exists():
        raise BundleError(f"{directory} is not an infinity-jax checkpoint (no {CONFIG_NAME}); "
                          f"convert official weights with `python -m infinity_jax.convert`")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON (truncated?): {e}") from None
    if not isinstance(cfg, dict):
        raise BundleError(f"{path} does not hold a JSON object")
    if cfg.get("format") != FORMAT:
        raise BundleError(f"{path}: unknown format {cfg.get('format')!r} (expected {FORMAT})")
    return cfg


def with_block_dtype(model: nnx.Module, dtype) -> nnx.Module:
    """``model`` with the floating parameters of its transformer blocks in ``dtype`` (the rest as
    they are). Works on an abstract model from ``nnx.eval_shape`` too, so a restore reads them
    straight into ``dtype``: the official inference keeps the blocks in bfloat16, half the memory."""
    dtype = jnp.dtype(dtype)
    graphdef, state = nnx.split(model)

    def cast(path, v):
        if not any(getattr(k, "key", None) == "blocks" for k in path) or not jnp.issubdtype(v.dtype, jnp.floating):
            return v
        if isinstance(v, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(v.shape, dtype, sharding=v.sharding)
        return v.astype(dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(cast, state))


def load(directory: str | os.PathLike, *, dtype: str | None = None, param_dtype: str | None = None, mesh=None):
    """Read a checkpoint folder -> (transformer, tokenizer, text_encoder_folder or None, config dict).

    ``dtype``: compute dtype of the transformer blocks (default: the checkpoint's);
    ``param_dtype``: storage dtype of the blocks' parameters (default float32, as stored;
    ``bfloat16`` halves the transformer's memory, see :func:`with_block_dtype`)."""
    directory = pathlib.Path(directory)
    cfg = read_config(directory)
    try:
        tcfg = InfinityConfig(**cfg["transformer"])
        if dtype is not None:
            tcfg = tcfg.replace(dtype=dtype)
        tok = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["tokenizer"].items()}
        # the token layout belongs to the transformer (the official code gives it the flag; a
        # tokenizer trained on its own does not know it): the tokenizer follows it
        tok["apply_spatial_patchify"] = tcfg.apply_spatial_patchify
        vcfg = VAEConfig(**tok)
    except (TypeError, ValueError, KeyError) as e:
        raise BundleError(f"{directory / CONFIG_NAME}: bad config: {e}") from e
    transformer = nnx.eval_shape(lambda: Infinity(tcfg, rngs=nnx.Rngs(0)))
    if param_dtype is not None:
        transformer = with_block_dtype(transformer, param_dtype)
    shardings = None
    if mesh is not None:
        shardings = nnx.to_pure_dict(state_shardings(nnx.state(transformer, nnx.Param), mesh))
    restore_params(transformer, directory / "transformer", "transformer", shardings)
    tokenizer = nnx.eval_shape(lambda: BSQVAE(vcfg, rngs=nnx.Rngs(0)))
    restore_params(tokenizer, directory / "tokenizer", "tokenizer")
    text = cfg.get("text_encoder")
    text_folder = directory / text if text else None
    if text_folder is not None and not text_folder.exists():
        raise BundleError(f"{directory}: text encoder folder {text_folder} is missing")
    return transformer, tokenizer, text_folder, cfg
