"""Official Infinity transformer state_dict <-> the NNX model.

Official names (PyTorch Linear weights are (out, in)): ``cfg_uncond``, ``pos_start``,
``text_norm.weight``, ``text_proj_for_sos.ca.{mat_q,v_bias,mat_kv.weight,proj.*}``,
``text_proj_for_ca.{0,2}.*``, ``lvl_embed.weight``, ``word_embed.*``, ``shared_ada_lin.1.*``,
``head_nm.ada_lin.1.*``, ``head.*`` and per block ``block_chunks.{c}.module.{i}.*`` (or
``blocks.{b}.*`` with one chunk). ``*.zero_k_bias`` buffers are all zeros and dropped.

The conversion is strict: every missing, unexpected or mis-shaped key is reported by name.
"""
from __future__ import annotations

import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infinity_jax.sharding import state_shardings
from infinity_jax.state_dict import CheckpointMismatchError, check_keys, check_values, load_state_dict, open_state_dict
from infinity_jax.transformer.config import InfinityConfig
from infinity_jax.transformer.model import Infinity

# our path (after the block index) -> (official suffix, kind)
_GLOBAL = {
    ("cfg_uncond",): ("cfg_uncond", "id"),
    ("pos_start",): ("pos_start", "id"),
    ("text_norm_scale",): ("text_norm.weight", "id"),
    ("text_pool", "mat_q"): ("text_proj_for_sos.ca.mat_q", "id"),
    ("text_pool", "v_bias"): ("text_proj_for_sos.ca.v_bias", "id"),
    ("text_pool", "mat_kv", "kernel"): ("text_proj_for_sos.ca.mat_kv.weight", "T"),
    ("text_pool", "proj", "kernel"): ("text_proj_for_sos.ca.proj.weight", "T"),
    ("text_pool", "proj", "bias"): ("text_proj_for_sos.ca.proj.bias", "id"),
    ("text_proj1", "kernel"): ("text_proj_for_ca.0.weight", "T"),
    ("text_proj1", "bias"): ("text_proj_for_ca.0.bias", "id"),
    ("text_proj2", "kernel"): ("text_proj_for_ca.2.weight", "T"),
    ("text_proj2", "bias"): ("text_proj_for_ca.2.bias", "id"),
    ("lvl_embed",): ("lvl_embed.weight", "id"),
    ("word_embed", "kernel"): ("word_embed.weight", "T"),
    ("word_embed", "bias"): ("word_embed.bias", "id"),
    ("shared_ada_lin", "kernel"): ("shared_ada_lin.1.weight", "T"),
    ("shared_ada_lin", "bias"): ("shared_ada_lin.1.bias", "id"),
    ("head_ada_lin", "kernel"): ("head_nm.ada_lin.1.weight", "T"),
    ("head_ada_lin", "bias"): ("head_nm.ada_lin.1.bias", "id"),
    ("head", "kernel"): ("head.weight", "T"),
    ("head", "bias"): ("head.bias", "id"),
}
_BLOCK = {
    ("ada_gss",): ("ada_gss", "id"),
    ("sa", "scale_mul"): ("sa.scale_mul_1H11", "scale_mul"),
    ("sa", "q_bias"): ("sa.q_bias", "id"),
    ("sa", "v_bias"): ("sa.v_bias", "id"),
    ("sa", "mat_qkv", "kernel"): ("sa.mat_qkv.weight", "T"),
    ("sa", "proj", "kernel"): ("sa.proj.weight", "T"),
    ("sa", "proj", "bias"): ("sa.proj.bias", "id"),
    ("ca", "v_bias"): ("ca.v_bias", "id"),
    ("ca", "mat_q", "kernel"): ("ca.mat_q.weight", "T"),
    ("ca", "mat_q", "bias"): ("ca.mat_q.bias", "id"),
    ("ca", "mat_kv", "kernel"): ("ca.mat_kv.weight", "T"),
    ("ca", "proj", "kernel"): ("ca.proj.weight", "T"),
    ("ca", "proj", "bias"): ("ca.proj.bias", "id"),
    ("ffn", "fc1", "kernel"): ("ffn.fc1.weight", "T"),
    ("ffn", "fc1", "bias"): ("ffn.fc1.bias", "id"),
    ("ffn", "fc2", "kernel"): ("ffn.fc2.weight", "T"),
    ("ffn", "fc2", "bias"): ("ffn.fc2.bias", "id"),
    ("ca_norm_scale",): ("ca_norm.weight", "id"),
    ("ca_norm_bias",): ("ca_norm.bias", "id"),
}
_BUFFER_RE = re.compile(r"(^|\.)zero_k_bias$")


def block_prefix(b: int, depth: int, block_chunks: int) -> str:
    """Official key prefix of block ``b``."""
    if block_chunks <= 1:
        return f"blocks.{b}."
    per = depth // block_chunks
    return f"block_chunks.{b // per}.module.{b % per}."


def _to_official(kind: str, a: np.ndarray) -> np.ndarray:
    if kind == "T":  # (din, [n,] dout) kernel -> torch (n*dout, din) weight
        return np.ascontiguousarray(a.reshape(a.shape[0], -1).T)
    if kind == "scale_mul":
        return a.reshape(1, -1, 1, 1)
    return a


def _from_official(kind: str, a: np.ndarray, want_shape) -> np.ndarray:
    if kind == "T":
        return np.ascontiguousarray(a.T).reshape(want_shape)
    if kind == "scale_mul":
        return a.reshape(want_shape)
    return a


def _official_shape(kind: str, shape) -> tuple:
    if kind == "T":
        return (int(np.prod(shape[1:])), shape[0])
    if kind == "scale_mul":
        return (1, shape[0], 1, 1)
    return tuple(shape)


def detect_block_chunks(state: Mapping[str, np.ndarray]) -> int:
    """How many chunks the checkpoint's ``block_chunks.{c}.module.{i}`` naming uses (1 for ``blocks.{b}``)."""
    chunks = {int(m.group(1)) for k in state if (m := re.match(r"block_chunks\.(\d+)\.module\.\d+\.", k))}
    return (max(chunks) + 1) if chunks else 1


def _param_table(model: Infinity):
    """[(our flat path, official key, kind, our shape)] for every parameter of the model."""
    cfg = model.cfg
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    rows = []
    for path, var in flat:
        shape = tuple(var.get_value().shape) if hasattr(var, "get_value") else tuple(var.value.shape)
        if path[0] == "blocks":
            if cfg.scan_blocks:
                sub, blocks = tuple(path[1:]), range(cfg.depth)
                off, kind = _BLOCK[sub]
                for b in blocks:
                    rows.append((path, b, block_prefix(b, cfg.depth, cfg.block_chunks) + off, kind, shape[1:]))
            else:
                b, sub = int(path[1]), tuple(path[2:])
                off, kind = _BLOCK[sub]
                rows.append((path, None, block_prefix(b, cfg.depth, cfg.block_chunks) + off, kind, shape))
        else:
            off, kind = _GLOBAL[tuple(path)]
            rows.append((path, None, off, kind, shape))
    return rows


def expected_official_shapes(model: Infinity) -> dict[str, tuple]:
    return {key: _official_shape(kind, shape) for _, _, key, kind, shape in _param_table(model)}


def load_official(model: Infinity, state: Mapping[str, np.ndarray] | str, *, dtype=jnp.float32,
                  text_maxlen_adapt: bool = False, shardings: Mapping | None = None) -> Infinity:
    """Copy an official state_dict into ``model`` in place (strict) and return it.

    The checkpoint's block-chunk naming may differ from ``model.cfg.block_chunks``; it is
    detected from the keys. ``text_maxlen_adapt`` pads/truncates ``cfg_uncond`` rows to the
    model's text_maxlen as the official loader does. ``state`` may hold lazily read tensors
    (:func:`infinity_jax.state_dict.open_state_dict`): each parameter is then read and placed
    on its devices one tensor at a time; with ``shardings`` (flat NNX path -> Sharding) each
    device receives only its shard, so a large model is never whole on one device.
    """
    if not isinstance(state, Mapping):
        state = load_state_dict(state)
    cfg = model.cfg
    chunks = detect_block_chunks(state)
    if chunks > 1 and cfg.depth % chunks:
        raise CheckpointMismatchError("transformer checkpoint", unexpected=[f"block_chunks={chunks} does not divide depth {cfg.depth}"])
    if chunks != cfg.block_chunks:
        model.cfg = cfg = cfg.replace(block_chunks=chunks)
    state = dict(state)
    if text_maxlen_adapt and "cfg_uncond" in state:
        u = np.asarray(state["cfg_uncond"])
        n = cfg.text_maxlen
        state["cfg_uncond"] = u[:n] if u.shape[0] >= n else np.concatenate([u, np.zeros((n - u.shape[0], u.shape[1]), u.dtype)])
    _check_token_layout(state, cfg)
    rows = _param_table(model)
    check_keys("transformer checkpoint", state, {k: _official_shape(kind, s) for _, _, k, kind, s in rows},
               ignore=[k for k in state if _BUFFER_RE.search(k)])
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    grouped: dict[tuple, list] = {}
    for path, b, key, kind, shape in rows:
        grouped.setdefault(path, []).append((b, key, kind, shape))
    for path, parts in grouped.items():
        def read(key, kind, shape):
            raw = np.asarray(state[key])
            check_values("transformer checkpoint", [(key, raw)])
            return _from_official(kind, raw.astype(np.float32), shape)

        if parts[0][0] is None:
            _, key, kind, shape = parts[0]
            gshape = tuple(shape)
            fetch = lambda idx, key=key, kind=kind, shape=shape: read(key, kind, shape)[idx]
        else:
            parts = sorted(parts, key=lambda p: p[0])
            gshape = (len(parts),) + tuple(parts[0][3])

            def fetch(idx, parts=parts):
                layers = range(len(parts))[idx[0]] if idx else range(len(parts))
                return np.stack([read(*parts[b][1:])[tuple(idx[1:])] for b in layers])
        sharding = (shardings or {}).get(path) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
        arr = jax.make_array_from_callback(gshape, sharding, lambda idx, f=fetch: np.asarray(f(idx), np.float32))
        flat[path].set_value(arr.astype(dtype))
    return model


def _check_token_layout(state: Mapping, cfg: InfinityConfig) -> None:
    """Name the token layout when the checkpoint's head width says another one than the config's."""
    head = state.get("head.weight")
    if head is None or tuple(head.shape)[0] == cfg.vocab:
        return
    V = int(tuple(head.shape)[0])
    raise CheckpointMismatchError(
        f"transformer checkpoint (its head gives {V} logits per token, {V // 2} bits; the config {cfg.vocab}: "
        f"codebook_dim {cfg.codebook_dim}, apply_spatial_patchify {cfg.apply_spatial_patchify}, which packs "
        f"2x2 tokenizer tokens per token as the official 8B)",
        mismatched=[("head.weight", tuple(head.shape), (cfg.vocab, cfg.embed_dim))])


def export_official(model: Infinity) -> dict[str, np.ndarray]:
    """The model's parameters under official names (float32 numpy), ``zero_k_bias`` included."""
    cfg = model.cfg
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    out = {}
    for path, b, key, kind, shape in _param_table(model):
        a = np.asarray(jax.device_get(flat[path].get_value()), np.float32)
        if b is not None:
            a = a[b]
        out[key] = _to_official(kind, a)
    C = cfg.embed_dim
    out["text_proj_for_sos.ca.zero_k_bias"] = np.zeros(C, np.float32)
    for b in range(cfg.depth):
        p = block_prefix(b, cfg.depth, cfg.block_chunks)
        out[p + "sa.zero_k_bias"] = np.zeros(C, np.float32)
        out[p + "ca.zero_k_bias"] = np.zeros(C, np.float32)
    return out


def load(path_or_state, cfg: InfinityConfig, *, dtype=jnp.float32, mesh=None, lazy: bool = True) -> Infinity:
    """Build an :class:`Infinity` for ``cfg`` and fill it from an official checkpoint.

    The model is created abstractly (no random init); with ``mesh`` every parameter goes
    straight into its NamedSharding from the logical-axis rules.
    """
    if not isinstance(path_or_state, Mapping):
        path_or_state = open_state_dict(path_or_state) if lazy else load_state_dict(path_or_state)
    model = nnx.eval_shape(lambda: Infinity(cfg, rngs=nnx.Rngs(0)))  # ShapeDtypeStruct leaves
    shardings = None
    if mesh is not None:
        sh = state_shardings(nnx.state(model, nnx.Param), mesh)
        shardings = {p: v.get_value() for p, v in nnx.to_flat_state(sh)}
    return load_official(model, path_or_state, dtype=dtype, shardings=shardings)
