"""Shared test helpers: loading the official reference fixtures into the project's models."""
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
    cfg = InfinityConfig.from_official(manifest, scan_blocks=scan)
    return load(str(pathlib.Path(folder) / "weights_infinity.npz"), cfg)


def schedule(folder: str):
    """The transformer's scale schedule of a fixture."""
    manifest, _, _ = fixture(folder)
    return [tuple(s) for s in manifest["config"]["scale_schedule"]]


def patchify_flag(folder: str) -> bool:
    """Whether the fixture uses spatial patchify (tokenizer grid = 2 x transformer grid)."""
    from infinity_jax.schedules import official_patchify

    manifest, _, _ = fixture(folder)
    return official_patchify(manifest)


def tokenizer_schedule(folder: str):
    """The tokenizer's grids of a fixture's schedule."""
    from infinity_jax import schedules

    return schedules.tokenizer_schedule(schedule(folder), patchify_flag(folder))


def convert_fixture(folder, out):
    """An inference checkpoint folder converted from a reference fixture's official files -> ``out``."""
    from infinity_jax.convert import convert

    convert(transformer_path=folder / "weights_infinity.npz", vae_path=folder / "weights_vae.npz",
            out=out, official_config=folder / "manifest.json", sampling={"cfg": 4.0, "tau": 0.5},
            log=lambda *a: None)
    return out
