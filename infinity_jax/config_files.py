"""Config files: ``path[:arg]`` -> ``get_config(arg)`` as a ConfigDict, with ``a.b=value`` overrides.

The one reader of experiment config files outside absl's ``config_flags`` (which the commands with
absl flags use): the demo, benchmarks and tests load ``configs/*.py`` through :func:`load`.

  load("configs/infinity.py:size=tiny,runlocal=True", ["batch_size=4", "data.path=/data/shards"])
  load("configs/infinity.py", {"model.dtype": "float32"})     # values as they are (type-checked)

Mistakes are one-line :class:`ConfigError`\\ s: a missing file, a file without ``get_config``, an
unknown key, a value of the wrong type.
"""
from __future__ import annotations

import ast
import importlib.util
import pathlib
from typing import Any, Iterable, Mapping

import ml_collections


class ConfigError(ValueError):
    """A mistake in a config file, its argument or an override (reported as one line, no traceback)."""


def load(spec: str, overrides: Iterable[str] | Mapping[str, Any] = ()) -> ml_collections.ConfigDict:
    """The ConfigDict of ``spec`` (``path`` or ``path:arg``; ``get_config(arg)``) with ``overrides`` set."""
    path, _, arg = str(spec).partition(":")
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file {path} not found")
    mod_spec = importlib.util.spec_from_file_location(f"_infinity_config_{p.stem}", p)
    mod = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(mod)
    except SyntaxError as e:
        raise ConfigError(f"config file {path} line {e.lineno}: {e.msg}") from e
    get_config = getattr(mod, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {path} defines no get_config(arg)")
    config = get_config(arg) if arg else get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config returned a {type(config).__name__}, not a ConfigDict")
    return apply_overrides(config, overrides)


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Iterable[str] | Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Set ``overrides`` on ``config`` (in place; returned): ``"a.b=text"`` strings, parsed to the
    current value's type, or a mapping ``{"a.b": value}`` of values as they are. Every key must exist."""
    items = overrides.items() if isinstance(overrides, Mapping) else (_split(o) for o in overrides)
    for key, value in items:
        node, leaf = _parent(config, str(key))
        old = node[leaf]
        new = _parse(key, value, old) if isinstance(value, str) and not isinstance(overrides, Mapping) else value
        try:
            node[leaf] = new
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config.{key}: {type(old).__name__} expected, got {new!r}") from e
    return config


def _split(override: str) -> tuple[str, str]:
    key, eq, value = str(override).removeprefix("--config.").partition("=")
    if not eq or not key:
        raise ConfigError(f"override {override!r} is not of the form key=value (e.g. batch_size=4)")
    return key, value


def _parent(config, key: str):
    *parents, leaf = key.split(".")
    node = config
    try:
        for k in parents:
            node = node[k]
        node[leaf]  # noqa: B018 - the key must exist
    except (KeyError, AttributeError, TypeError):
        raise ConfigError(f"config.{key}: no such key") from None
    return node, leaf


def _parse(key: str, text: str, old: Any) -> Any:
    """``text`` as a value of ``old``'s type (strings stay as written)."""
    if isinstance(old, str):
        return text
    if isinstance(old, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes"):
            return True
        if low in ("0", "false", "no"):
            return False
        raise ConfigError(f"config.{key}: bool expected (true/false), got {text!r}")
    try:
        new = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        new = text
    if old is None:
        return new
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(new, bool):
        if isinstance(old, int) and float(new) != int(new):
            raise ConfigError(f"config.{key}: int expected, got {text!r}")
        return type(old)(new)
    if isinstance(old, (tuple, list)) and isinstance(new, (tuple, list)):
        return type(old)(new)
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return new
    raise ConfigError(f"config.{key}: {type(old).__name__} expected, got {text!r}")


__all__ = ["ConfigError", "load", "apply_overrides"]
