"""Data sources by name: ``config.data`` -> a random-access source for the data pipeline.

``config.data.source`` is one of :data:`SOURCES`:

* ``arrayrecord``: the shards in ``data.path`` (:class:`~infinity_jax.data.arrayrecord.ArrayRecordSource`);
* ``tfds``: a TFDS dataset (``data.tfds``);
* ``synthetic``: random images and captions (``data.synthetic``);
* ``factory``: ``data.factory(**data.factory_kwargs)``, where ``data.factory`` is a built-in name of
  :data:`FACTORIES` (e.g. ``"shapes"``) or ``"module:callable"`` for user code.

Configs also name image sets this way (``config.eval.factory`` of the tokenizer trainer:
``"shapes_heldout"``); :func:`resolve_factory` resolves either kind.
"""
from __future__ import annotations

import importlib
import logging
from typing import Callable

from infinity_jax.config_files import ConfigError
from infinity_jax.data import shapes
from infinity_jax.data.arrayrecord import ArrayRecordSource
from infinity_jax.data.synthetic import SyntheticSource
from infinity_jax.data.tfds_source import TFDSSource

log = logging.getLogger(__name__)

SOURCES = ("arrayrecord", "tfds", "synthetic", "factory")

#: Built-in factories by name: sources (``data.factory``) and image sets (``eval.factory``).
FACTORIES: dict[str, Callable] = {
    "shapes": shapes.shapes_source,            # the shapes stream, a finite window without specs
    "shapes_heldout": shapes.heldout_images,   # true renders of the held-out prompts, uint8 (N, H, W, 3)
}

#: Older spellings of built-in factories (configs saved in existing workdirs name them).
ALIASES = {
    "infinity_jax.demo:shapes_source": "shapes",
    "infinity_jax.demo:heldout_images": "shapes_heldout",
}


def resolve_factory(spec: str, key: str = "config.data.factory") -> Callable:
    """The callable named by ``spec``: a name of :data:`FACTORIES` (or :data:`ALIASES`) or
    ``"module:callable"``; ``key`` names the config field in the error."""
    spec = ALIASES.get(str(spec), str(spec))
    if spec in FACTORIES:
        return FACTORIES[spec]
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise ConfigError(f"{key} must be one of {sorted(FACTORIES)} or 'module:callable', got {spec!r}")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {key} {spec!r}: {e}") from e


def resolve_data_source(config) -> None:
    """Choose and check the source of ``config.data`` (in place).

    An explicit ``data.path`` wins over the synthetic default of ``runlocal=True``
    (``data.synthetic_unless_path``); a path with an explicit synthetic source is an error.
    """
    d = config.data
    if d.source == "synthetic" and d.path:
        if not d.get("synthetic_unless_path", False):
            raise ConfigError(f"config.data.path={d.path!r} is set but config.data.source='synthetic' ignores it; "
                              f"drop one of them")
        d.source = "arrayrecord"
        log.info("reading the shards in config.data.path=%s (runlocal's synthetic data is replaced)", d.path)
    if d.source not in SOURCES:
        raise ConfigError(f"config.data.source must be 'arrayrecord', 'tfds', 'synthetic' or 'factory', "
                          f"got {d.source!r}")
    if d.source == "arrayrecord" and not d.path:
        raise ConfigError("config.data.source='arrayrecord' needs config.data.path (a folder of shards)")
    if d.source == "tfds" and not d.tfds.name:
        raise ConfigError("config.data.source='tfds' needs config.data.tfds.name")


def build_source(config):
    """The random-access source named by ``config.data`` (see the module docstring)."""
    d = config.data
    if d.source == "arrayrecord":
        return ArrayRecordSource(d.path)
    if d.source == "tfds":
        t = d.tfds
        return TFDSSource(t.name, split=t.split, data_dir=t.data_dir or None, image_key=t.image_key,
                          caption_key=t.caption_key or None)
    if d.source == "synthetic":
        s = d.synthetic
        return SyntheticSource(int(s.num_records), sizes=tuple(tuple(x) for x in s.sizes), seed=int(s.seed),
                               corrupt=tuple(s.get("corrupt", ())))
    if d.source == "factory":
        return resolve_factory(d.factory)(**dict(d.factory_kwargs))
    raise ConfigError(f"config.data.source must be one of {', '.join(SOURCES)}, got {d.source!r}")


__all__ = ["SOURCES", "FACTORIES", "ALIASES", "resolve_factory", "resolve_data_source", "build_source"]
