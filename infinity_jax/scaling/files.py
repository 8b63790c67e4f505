"""Sweep files: JSON / JSON-lines reads and writes on local or cloud paths (``etils.epath``)."""
from __future__ import annotations

import json

import jax
import numpy as np
from etils import epath


def as_path(p):
    return epath.Path(p)


def is_primary() -> bool:
    return jax.process_index() == 0


def write_json(path, obj) -> None:
    p = as_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=1, default=_json_default))


def read_json(path):
    return json.loads(as_path(path).read_text())


def read_jsonl(path) -> list[dict]:
    p = as_path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def append_jsonl(path, rec: dict) -> None:
    p = as_path(path)
    old = p.read_text() if p.exists() else ""
    p.write_text(old + json.dumps(rec, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))

