"""Shared test helpers: loading the official-tiny fixture into the project's models."""
from __future__ import annotations

import functools
import json
import pathlib

import numpy as np


@functools.lru_cache(maxsize=4)
def fixture(folder: str):
    """(manifest, inputs, goldens) of a fixture folder, cached per session."""
    f = pathlib.Path(folder)
    manifest = json.loads((f / "manifest.json").read_text())
    inputs = dict(np.load(f / "inputs.npz"))
    goldens = {p.stem: dict(np.load(p)) for p in sorted(f.glob("golden_*.npz"))}
    return manifest, inputs, goldens


@functools.lru_cache(maxsize=4)
def transformer(folder: str, scan: bool = False):
    from infinity_jax.transformer.config import InfinityConfig
    from infinity_jax.transformer.convert import load

    manifest, _, _ = fixture(folder)
    cfg = InfinityConfig.from_official(manifest["config"]["infinity"], scan_blocks=scan)
    return load(str(pathlib.Path(folder) / "weights_infinity.npz"), cfg)


def schedule(folder: str):
    manifest, _, _ = fixture(folder)
    return [tuple(s) for s in manifest["config"]["scale_schedule"]]
