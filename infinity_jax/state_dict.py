"""Reading official PyTorch state_dicts and checking them strictly.

Official checkpoints come as ``.pth`` (a pickled dict, possibly wrapped as ``{"vae": ...}``,
``{"ema": ...}``, ``{"trainer": {"gpt_fsdp": ...}}``), ``.safetensors`` (possibly sharded
with an ``*.index.json``) or, for the reference fixtures, ``.npz``. Everything is returned
as a flat ``{name: np.ndarray}``; torch is imported only for ``.pth`` files.

Pickled files (``.pth``, ``.pt``, ``.bin``, ``.ckpt``) are read with ``torch.load(weights_only=True)``:
tensors, dicts, lists and numbers only, so a file cannot run code when it is opened. A trusted
legacy file that pickles other objects (an ``argparse.Namespace`` in a trainer checkpoint) needs
the explicit opt-in ``trust_pickle=True`` (``--trust_pickle`` on the commands,
``config.trust_pickle`` in training, or ``INFINITY_JAX_TRUST_PICKLE=1``); better, convert it once
to ``.safetensors``.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
import pathlib
from typing import Iterable, Mapping

import numpy as np


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not match the model it is loaded into."""

    def __init__(self, what: str, missing=(), unexpected=(), mismatched=()):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = [f"{what} does not match the model config:"]

        def show(title, items, fmt=str):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {fmt(i)}" for i in items[:50])
                if len(items) > 50:
                    lines.append(f"    ... and {len(items) - 50} more")

        show("missing keys", self.missing)
        show("unexpected keys", self.unexpected)
        show("wrong shapes", self.mismatched, lambda m: f"{m[0]}: checkpoint {m[1]} vs model {m[2]}")
        super().__init__("\n".join(lines))


class UnsafeCheckpointError(ValueError):
    """A pickled checkpoint holding objects other than tensors (it could run code when unpickled)."""


class DamagedCheckpointError(ValueError):
    """A weight file that exists but cannot be parsed (truncated, corrupt, wrong format)."""


#: Environment variable that, set to 1, trusts pickled checkpoints (same as ``trust_pickle=True``).
TRUST_PICKLE_ENV = "INFINITY_JAX_TRUST_PICKLE"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def pickle_trusted(trust_pickle: bool | None = None) -> bool:
    """``trust_pickle`` if given, else whether ``INFINITY_JAX_TRUST_PICKLE`` is set to 1/true/yes."""
    if trust_pickle is not None:
        return bool(trust_pickle)
    return os.environ.get(TRUST_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def _torch_load(path: pathlib.Path, trust_pickle: bool | None, mmap: bool = False):
    """``torch.load`` with ``weights_only`` unless trusted; a refused pickle -> :class:`UnsafeCheckpointError`."""
    try:
        import torch  # noqa: PLC0415
    except ImportError as e:
        raise ImportError("reading .pth files needs PyTorch: pip install 'infinity-jax[torch]'") from e
    trusted = pickle_trusted(trust_pickle)
    kw = {"mmap": True} if mmap else {}
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trusted, **kw)
    except pickle.UnpicklingError as e:
        if trusted or "weights only" not in str(e).lower():
            raise DamagedCheckpointError(f"{path} cannot be read: {_first_line(e)}") from None
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise UnsafeCheckpointError(
            f"{path} pickles Python objects other than tensors{what}; opening it could run "
            f"code, so it is refused. Convert it to .safetensors, or, only if you trust the file, pass "
            f"--trust_pickle (config.trust_pickle=True or {TRUST_PICKLE_ENV}=1)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # truncated or not a torch file
        raise DamagedCheckpointError(f"{path} cannot be read (truncated or not a PyTorch file?): "
                                     f"{_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


_WRAPPER_KEYS = ("vae", "ema", "state_dict", "model", "gpt_fsdp", "gpt_wo_ddp", "module")


def _unwrap(obj) -> Mapping:
    """Descend through the usual wrapper dicts until the tensor dict is reached."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if "trainer" in obj and isinstance(obj["trainer"], Mapping):
            obj = obj["trainer"]
            continue
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        else:
            break
    return obj


def _to_numpy(v) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    try:
        import torch  # noqa: PLC0415

        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            if v.dtype == torch.bfloat16:
                v = v.float()
            return v.numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(v)


def _shard_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """The .safetensors shards of a folder (from its ``*.safetensors.index.json`` when present)."""
    index = sorted(folder.glob("*.safetensors.index.json"))
    files = (sorted({folder / f for f in json.loads(index[0].read_text())["weight_map"].values()})
             if index else sorted(folder.glob("*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {folder}")
    return files


def load_state_dict(path: str | os.PathLike, *, trust_pickle: bool | None = None) -> dict[str, np.ndarray]:
    """Read a checkpoint file (or a folder of safetensors shards) into ``{key: array}``.

    ``trust_pickle``: unpickle arbitrary objects in ``.pth`` files (default: only tensors; see the
    module docstring).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        out: dict[str, np.ndarray] = {}
        for f in _shard_files(path):
            out.update(load_state_dict(f, trust_pickle=trust_pickle))
        return out
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DamagedCheckpointError(f"{path} cannot be read (truncated?): {_first_line(e)}") from None
    if suffix == ".safetensors":
        from safetensors.numpy import load_file  # noqa: PLC0415

        try:
            return dict(load_file(str(path)))
        except Exception:  # noqa: BLE001 - bf16 tensors: go through torch
            from safetensors.torch import load_file as load_torch  # noqa: PLC0415

            try:
                return {k: _to_numpy(v) for k, v in load_torch(str(path)).items()}
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
                raise DamagedCheckpointError(f"{path} cannot be read (truncated?): {_first_line(e)}") from None
    if suffix in PICKLE_SUFFIXES:
        obj = _unwrap(_torch_load(path, trust_pickle))
        return {k: _to_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}
    raise ValueError(f"unsupported checkpoint format {path.suffix!r} ({path}); use .pth, .safetensors or .npz")


class CheckpointValueError(ValueError):
    """Tensors whose values cannot be weights: non-float dtypes, NaN or inf (listed by key)."""


def value_problem(value) -> str | None:
    """Why ``value`` cannot be a float weight (``'int64 values where floats are expected'``,
    ``'3 non-finite values (NaN/inf) of 1024'``), or None."""
    a = np.asarray(value)
    if a.dtype.kind != "f":
        return f"{a.dtype} values where floats are expected"
    bad = a.size - int(np.count_nonzero(np.isfinite(a)))
    return f"{bad} non-finite values (NaN/inf) of {a.size}" if bad else None


def check_values(what: str, items: Iterable[tuple[str, object]]) -> None:
    """Raise :class:`CheckpointValueError` naming every key of ``items`` whose value is not a finite float."""
    problems = [(k, p) for k, v in items if (p := value_problem(v)) is not None]
    if problems:
        lines = [f"{what} has tensors that cannot be weights ({len(problems)}):"]
        lines += [f"  {k}: {p}" for k, p in problems[:50]]
        if len(problems) > 50:
            lines.append(f"  ... and {len(problems) - 50} more")
        raise CheckpointValueError("\n".join(lines))


def check_keys(what: str, state: Mapping[str, np.ndarray], expected: Mapping[str, tuple],
               ignore: Iterable[str] = ()) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state`` has exactly ``expected``'s keys and shapes.

    ``ignore`` lists checkpoint keys that may be present and are dropped (non-persistent buffers).
    """
    ignore = set(ignore)
    have = set(state) - ignore
    want = set(expected)
    missing = sorted(want - have)
    unexpected = sorted(have - want)
    mismatched = sorted((k, tuple(state[k].shape), tuple(expected[k])) for k in want & have
                        if tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(what, missing, unexpected, mismatched)


class LazyTensor:
    """A checkpoint tensor read only when converted with ``np.asarray`` (``shape`` is free)."""

    def __init__(self, shape, read):
        self.shape = tuple(int(s) for s in shape)
        self._read = read

    def __array__(self, dtype=None, copy=None):
        a = _to_numpy(self._read())
        return a.astype(dtype) if dtype is not None else a


def open_state_dict(path: str | os.PathLike, *, trust_pickle: bool | None = None) -> dict:
    """Like :func:`load_state_dict` but tensors are read one at a time on access.

    ``.safetensors`` (and folders of shards) are read per tensor; ``.pth`` files are memory-mapped
    (``torch.load(mmap=True)``); ``.npz`` members are read on access. Use this to convert large
    checkpoints without holding them whole in memory.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        out: dict = {}
        for f in _shard_files(path):
            out.update(open_state_dict(f, trust_pickle=trust_pickle))
        return out
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open  # noqa: PLC0415

        out = {}
        with safe_open(str(path), framework="np") as f:
            keys = list(f.keys())
            shapes = {k: f.get_slice(k).get_shape() for k in keys}

        def reader(k):
            def read():
                try:
                    with safe_open(str(path), framework="np") as g:
                        return g.get_tensor(k)
                except Exception:  # bf16: numpy cannot hold it
                    with safe_open(str(path), framework="pt") as g:
                        return g.get_tensor(k)
            return read

        return {k: LazyTensor(shapes[k], reader(k)) for k in keys}
    if suffix == ".npz":
        data = np.load(path, mmap_mode="r")
        return {k: LazyTensor(data[k].shape, (lambda k=k: data[k])) for k in data.files}
    if suffix in PICKLE_SUFFIXES:
        try:
            obj = _torch_load(path, trust_pickle, mmap=True)
        except UnsafeCheckpointError:
            raise
        except DamagedCheckpointError:  # old (non-zip) format cannot be memory-mapped
            obj = _torch_load(path, trust_pickle)
        obj = _unwrap(obj)
        return {k: LazyTensor(v.shape, (lambda v=v: v)) for k, v in obj.items() if hasattr(v, "shape")}
    raise ValueError(f"unsupported checkpoint format {path.suffix!r} ({path}); use .pth, .safetensors or .npz")
