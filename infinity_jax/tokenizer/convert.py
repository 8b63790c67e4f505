"""Official BSQ-VAE state_dict <-> NNX :class:`~infinity_jax.tokenizer.vae.BSQVAE`.

Official names follow the PyTorch module tree of ``flux_vqgan.AutoEncoder``; convolutions and
GroupNorms are wrapped (``...conv1.conv.weight``, ``...norm1.norm.weight``). Like the official
``load_cnn``, un-wrapped names (``...conv1.weight``, ``...norm1.weight``,
``...downsample.conv.weight``) are accepted too. Conv kernels are OIHW there and HWIO here.

The mapping is derived from the model itself: ``nnx.eval_shape`` builds the model abstractly, every
``nnx.Conv`` at path ``p`` owns ``p.conv.{weight,bias}`` and every GroupNorm ``p.norm.{weight,bias}``.
The model module does not import this one; :func:`load` is the tokenizer's loader.
Loading is strict: :func:`check_state_dict` reports every missing, unexpected and mis-shaped key.
The quantizer's ``mask`` buffers (``quantizer.lfq.mask``, ``quantize.lfq.mask``; int64 (d,), a
constant ``2**arange(d-1..0)``) carry no weights; they may be absent, but when present their shape
must be ``(d,)``. :func:`to_official` writes them back so that a round trip is exact.
"""
from __future__ import annotations

import functools
import re
import os
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infinity_jax.state_dict import CheckpointMismatchError, _to_numpy, check_keys, check_values, load_state_dict
from infinity_jax.tokenizer.vae import BSQVAE, GroupNorm, VAEConfig

#: The quantizer buffers of the official state_dict (the same module under two names).
MASK_KEYS = ("quantizer.lfq.mask", "quantize.lfq.mask")


def _abstract_model(config: VAEConfig) -> BSQVAE:
    return nnx.eval_shape(lambda: BSQVAE(config, rngs=nnx.Rngs(0)))


def _entries(model: BSQVAE) -> Iterator[tuple[str, nnx.Variable, bool]]:
    """Yield ``(official name, variable, is_conv_kernel)`` for every parameter of ``model``."""
    for path, module in nnx.iter_modules(model):
        prefix = ".".join(str(p) for p in path)
        if isinstance(module, nnx.Conv):
            yield f"{prefix}.conv.weight", module.kernel, True
            yield f"{prefix}.conv.bias", module.bias, False
        elif isinstance(module, GroupNorm):
            yield f"{prefix}.norm.weight", module.scale, False
            yield f"{prefix}.norm.bias", module.bias, False


def _official_shape(var: nnx.Variable, is_kernel: bool) -> tuple[int, ...]:
    shape = tuple(var.get_value().shape)
    if is_kernel:  # HWIO -> OIHW
        kh, kw, ci, co = shape
        return (co, ci, kh, kw)
    return shape


def expected_shapes(config: VAEConfig) -> dict[str, tuple[int, ...]]:
    """``{official name: shape}`` of every weight for ``config`` (mask buffers excluded)."""
    return dict(_expected_shapes(config))


@functools.lru_cache(maxsize=16)
def _expected_shapes(config: VAEConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((name, _official_shape(var, k)) for name, var, k in _entries(_abstract_model(config)))


def mask_buffer(codebook_dim: int) -> np.ndarray:
    """The official ``lfq.mask`` buffer: int64 ``2**arange(d-1, -1, -1)``, wrapping like torch's int64."""
    vals = [(1 << e) % (1 << 64) for e in range(codebook_dim - 1, -1, -1)]
    return np.array([v - (1 << 64) if v >= (1 << 63) else v for v in vals], dtype=np.int64)


def canonicalize(state: Mapping[str, Any], expected: Mapping[str, Any]) -> dict[str, Any]:
    """Rename un-wrapped keys (``x.weight``) to the wrapped official form (``x.conv.weight``).

    A key is renamed only when the wrapped name is expected and not also present; anything else is
    kept as is (and will be reported as unexpected by :func:`check_state_dict`).
    """
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = key
        if key not in expected and "." in key:
            base, leaf = key.rsplit(".", 1)
            for wrap in ("conv", "norm"):
                cand = f"{base}.{wrap}.{leaf}"
                if cand in expected and cand not in state:
                    new = cand
                    break
        out[new] = value
    return out


def infer_config(state: Mapping[str, Any], **overrides) -> VAEConfig:
    """Read the config off an official state_dict's shapes.

    ``codebook_dim`` from ``encoder.conv_out``, ``base_ch`` from ``encoder.conv_in``, ``ch_mult`` and
    ``num_res_blocks`` from ``encoder.down.*``, ``patch_size`` from the number of downsamplers.
    ``apply_spatial_patchify`` is set when ``patch_size == 8`` (as every official config does).
    """
    def shape(name: str):
        for cand in (name.replace(".weight", ".conv.weight"), name):
            if cand in state:
                return tuple(np.shape(state[cand]))
        raise CheckpointMismatchError("VAE state_dict", missing=[name.replace(".weight", ".conv.weight")])

    base_ch = shape("encoder.conv_in.weight")[0]
    d = shape("encoder.conv_out.weight")[0]
    levels: dict[int, set] = {}
    downs = set()
    pat = re.compile(r"^encoder\.down\.(\d+)\.(block\.(\d+)|downsample)\.")
    for key in state:
        m = pat.match(key)
        if m:
            i = int(m.group(1))
            levels.setdefault(i, set())
            if m.group(3) is not None:
                levels[i].add(int(m.group(3)))
            else:
                downs.add(i)
    if not levels:
        raise CheckpointMismatchError("VAE state_dict", missing=["encoder.down.0.block.0.conv1.conv.weight"])
    ch_mult = tuple(shape(f"encoder.down.{i}.block.0.conv1.weight")[0] // base_ch for i in sorted(levels))
    num_res_blocks = len(levels[0])
    patch_size = 2 ** len(downs)
    kw = dict(codebook_dim=d, base_ch=base_ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
              patch_size=patch_size, apply_spatial_patchify=patch_size == 8)
    kw.update(overrides)
    return VAEConfig(**kw)


def check_state_dict(state: Mapping[str, Any], config: VAEConfig) -> dict[str, np.ndarray]:
    """Canonicalize names and check keys/shapes strictly; return ``{official name: np.ndarray}``.

    Raises :class:`CheckpointMismatchError` listing every missing, unexpected or mis-shaped key.
    """
    expected = expected_shapes(config)
    state = canonicalize(state, expected)
    arrays = {k: np.asarray(_to_numpy(v)) for k, v in state.items()}
    missing, unexpected, mismatched = [], [], []
    try:
        check_keys("VAE state_dict", arrays, expected, ignore=MASK_KEYS)
    except CheckpointMismatchError as err:
        missing, unexpected, mismatched = err.missing, err.unexpected, err.mismatched
    mismatched = sorted(mismatched + [(k, tuple(arrays[k].shape), (config.codebook_dim,))
                                      for k in MASK_KEYS
                                      if k in arrays and tuple(arrays[k].shape) != (config.codebook_dim,)])
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError("VAE state_dict", missing, unexpected, mismatched)
    out = {k: v for k, v in arrays.items() if k not in MASK_KEYS}
    check_values("VAE state_dict", out.items())
    return out


def from_official(state: Mapping[str, Any], config: VAEConfig | None = None, *,
                  param_dtype=jnp.float32) -> BSQVAE:
    """Build a :class:`BSQVAE` holding the weights of an official state_dict.

    No random initialisation runs: the model is built abstractly and every parameter is filled
    from ``state`` (OIHW kernels are transposed to HWIO).
    """
    if config is None:
        config = infer_config(state)
    arrays = check_state_dict(state, config)
    model = _abstract_model(config)
    for name, var, is_kernel in _entries(model):
        value = arrays[name]
        if is_kernel:
            value = value.transpose(2, 3, 1, 0)
        var.set_value(jnp.asarray(value, dtype=param_dtype))
    leftovers = [path for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model))
                 if isinstance(leaf, jax.ShapeDtypeStruct)]
    if leftovers:  # pragma: no cover - would mean a parameter kind the mapping does not know
        raise RuntimeError(f"parameters left unloaded: {leftovers}")
    return model


def load_into(model: BSQVAE, state: Mapping[str, Any]) -> BSQVAE:
    """Overwrite ``model``'s parameters in place from an official state_dict (strict)."""
    arrays = check_state_dict(state, model.config)
    for name, var, is_kernel in _entries(model):
        value = arrays[name]
        if is_kernel:
            value = value.transpose(2, 3, 1, 0)
        var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))
    return model


def to_official(model: BSQVAE, *, include_buffers: bool = True) -> dict[str, np.ndarray]:
    """Export weights under the official (wrapped) names, OIHW kernels, float32 numpy arrays.

    With ``include_buffers`` the two ``lfq.mask`` buffers are added, giving the full 270-key
    (stride 16) official state_dict.
    """
    out: dict[str, np.ndarray] = {}
    for name, var, is_kernel in _entries(model):
        value = np.asarray(jax.device_get(var.get_value()), dtype=np.float32)
        out[name] = value.transpose(3, 2, 0, 1) if is_kernel else value
    if include_buffers:
        for key in MASK_KEYS:
            out[key] = mask_buffer(model.config.codebook_dim)
    return out


def load(path_or_state: str | os.PathLike | Mapping[str, Any], config: VAEConfig | Mapping | None = None) -> BSQVAE:
    """Build a :class:`BSQVAE` from an official checkpoint (path or state dict).

    ``config`` may be a :class:`VAEConfig`, an official-style dict (see
    :meth:`VAEConfig.from_official`) or None to infer it from the weights' shapes.
    Raises :class:`~infinity_jax.state_dict.CheckpointMismatchError` naming every missing,
    unexpected or mis-shaped key.
    """
    if isinstance(path_or_state, Mapping):
        state = path_or_state
    else:
        state = load_state_dict(path_or_state)
    if isinstance(config, Mapping):
        config = VAEConfig.from_official(config)
    return from_official(state, config)
