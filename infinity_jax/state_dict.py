"""Reading official PyTorch state_dicts and checking them strictly.

Official checkpoints come as ``.pth`` (a pickled dict, possibly wrapped as ``{"vae": ...}``,
``{"ema": ...}``, ``{"trainer": {"gpt_fsdp": ...}}``), ``.safetensors`` (possibly sharded
with an ``*.index.json``) or, for the reference fixtures, ``.npz``. Everything is returned
as a flat ``{name: np.ndarray}``; torch is imported only for ``.pth`` files.
"""
from __future__ import annotations

import json
import os
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


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a checkpoint file (or a folder of safetensors shards) into ``{key: array}``."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        out: dict[str, np.ndarray] = {}
        for f in _shard_files(path):
            out.update(load_state_dict(f))
        return out
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    if suffix == ".safetensors":
        from safetensors.numpy import load_file  # noqa: PLC0415

        try:
            return dict(load_file(str(path)))
        except Exception:  # bf16 tensors: go through torch
            from safetensors.torch import load_file as load_torch  # noqa: PLC0415

            return {k: _to_numpy(v) for k, v in load_torch(str(path)).items()}
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            import torch  # noqa: PLC0415
        except ImportError as e:
            raise ImportError("reading .pth files needs PyTorch: pip install 'infinity-jax[torch]'") from e
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
        obj = _unwrap(obj)
        return {k: _to_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}
    raise ValueError(f"unsupported checkpoint format {path.suffix!r} ({path}); use .pth, .safetensors or .npz")


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


def open_state_dict(path: str | os.PathLike) -> dict:
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
            out.update(open_state_dict(f))
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
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            import torch  # noqa: PLC0415
        except ImportError as e:
            raise ImportError("reading .pth files needs PyTorch: pip install 'infinity-jax[torch]'") from e
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)
        except Exception:  # old (non-zip) format cannot be memory-mapped
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        obj = _unwrap(obj)
        return {k: LazyTensor(v.shape, (lambda v=v: v)) for k, v in obj.items() if hasattr(v, "shape")}
    raise ValueError(f"unsupported checkpoint format {path.suffix!r} ({path}); use .pth, .safetensors or .npz")
