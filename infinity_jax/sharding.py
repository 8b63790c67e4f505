"""Logical axis names, the one rules table that maps them to mesh axes, and mesh helpers.

Every parameter in the package carries logical axis names (``nnx.Param(..., sharding=names)``
through :func:`param`). A rules table maps each logical name to a mesh axis (or None =
replicated); changing the parallelism plan means changing this table, never the models.

Mesh axes: ``data`` (pure data parallel), ``fsdp`` (data parallel + parameter sharding),
``tensor`` (Megatron-style model parallel).
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Parameters carry logical names as metadata only; placement happens when a state is created
# or moved under explicit shardings (``jax.jit(..., out_shardings=...)``), never eagerly.
import flax  # noqa: E402

flax.config.update("flax_always_shard_variable", False)

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

#: logical axis name -> mesh axis (or tuple of axes, or None).
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("embed", "fsdp"),          # model width C
    ("mlp", "tensor"),          # FFN hidden
    ("heads", "tensor"),        # attention heads (q/k/v projections' output, proj input)
    ("kv", None),               # per-head dim
    ("qkv", None),              # the 3 of a fused qkv projection
    ("text_embed", "fsdp"),     # T5 width (2048 for Flan-T5-XL)
    ("text_len", None),         # cfg_uncond rows
    ("vocab", None),            # head logits (2d) / token vocab
    ("bits", None),             # d, codebook bits
    ("adaln", None),            # the 6 (or 2) AdaLN chunks
    ("levels", None),           # scale-level embedding rows
    ("layers", None),           # stacked blocks under scan
    ("conv_spatial", None),     # conv kernel taps
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("norm", None),             # norm scales/biases
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
)


def param(init: Callable, names: Sequence[str | None]) -> Callable:
    """Wrap an initializer so the created ``nnx.Param`` carries logical axis ``names``."""
    return nnx.with_partitioning(init, tuple(names))


def logical_to_spec(names: Sequence[str | None] | None, rules=LOGICAL_AXIS_RULES,
                    mesh: Mesh | None = None) -> P:
    """Translate logical axis names into a PartitionSpec using ``rules``.

    A mesh axis is used at most once per spec; axes of size 1 in ``mesh`` are dropped.
    """
    if names is None:
        return P()
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in names:
        axes = table.get(name) if name is not None else None
        if axes is None:
            out.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a not in used and (mesh is None or mesh.shape.get(a, 1) > 1))
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out)


def _names_of(var) -> tuple | None:
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    for key in ("out_sharding", "sharding_names", "sharding"):
        if meta.get(key) is not None:
            return tuple(meta[key])
    return None


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _placement(var, mesh: Mesh, rules) -> tuple[P, list[tuple[int, str, tuple]]]:
    """(PartitionSpec, [(dim, logical name, mesh axes) of each dimension the mesh axes do not divide])."""
    names = _names_of(var)
    value = var.get_value() if hasattr(var, "get_value") else var.value
    spec = logical_to_spec(names, rules, mesh) if names is not None else P()
    spec = list(spec) + [None] * (np.ndim(value) - len(spec))
    dropped = []
    for i, axes in enumerate(spec):
        if axes is None:
            continue
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
        size = int(np.prod([mesh.shape[a] for a in axes_t]))
        if value.shape[i] % size:
            dropped.append((i, names[i] if names and i < len(names) else None, axes_t))
            spec[i] = None
    return P(*spec[: np.ndim(value)]), dropped


def indivisible_params(state: nnx.State, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> list[dict]:
    """The parameters with a dimension that its mesh axes do not divide (so it is replicated):
    ``[{"param", "shape", "dim", "logical", "mesh_axes", "mesh_size"}]``."""
    out = []

    def one(path, var):
        _, dropped = _placement(var, mesh, rules)
        shape = tuple(int(x) for x in np.shape(var.get_value() if hasattr(var, "get_value") else var.value))
        for dim, logical, axes in dropped:
            out.append({"param": _path_name(path), "shape": shape, "dim": dim, "logical": logical,
                        "mesh_axes": axes, "mesh_size": int(np.prod([mesh.shape[a] for a in axes]))})
        return var

    jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return out


def state_shardings(state: nnx.State, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> nnx.State:
    """A pytree of NamedShardings matching an NNX state, from each variable's logical names.

    A dimension that the mesh axis does not divide is replicated instead, with a logged warning
    naming the parameter, its shape, the logical name and the mesh axis.
    """
    for d in indivisible_params(state, mesh, rules):
        log.warning("parameter %s of shape %s: dimension %d (logical %r) is not divisible by mesh axis %s "
                    "of size %d; it is replicated on that axis", d["param"], d["shape"], d["dim"], d["logical"],
                    "x".join(d["mesh_axes"]), d["mesh_size"])

    def one(var):
        return var.replace(NamedSharding(mesh, _placement(var, mesh, rules)[0]))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_mesh(shape: dict[str, int] | Sequence[int] | None = None, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one size may be -1 to take the remaining devices."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    n = devices.size
    if shape is None:
        shape = {"data": -1}
    if not isinstance(shape, dict):
        shape = dict(zip(MESH_AXES, shape))
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n % known:
            raise ValueError(f"{n} devices cannot fill mesh {dict(zip(MESH_AXES, sizes))}")
        sizes[sizes.index(-1)] = n // known
    if int(np.prod(sizes)) != n:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, have {n}")
    return Mesh(devices.reshape(sizes), MESH_AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes a batch is split over: ``data`` and ``fsdp``, those of size > 1."""
    return tuple(a for a in ("data", "fsdp") if mesh.shape.get(a, 1) > 1)


def _mesh_active() -> bool:
    """Whether a mesh of more than one device is set (``jax.set_mesh``)."""
    mesh = jax.sharding.get_abstract_mesh() if hasattr(jax.sharding, "get_abstract_mesh") else None
    return mesh is not None and not mesh.empty and mesh.size > 1


def constrain(x: jax.Array, names: Sequence[str | None], rules=LOGICAL_AXIS_RULES) -> jax.Array:
    """``with_sharding_constraint`` by logical names when a mesh is active; no-op otherwise."""
    if not _mesh_active():
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules))


#: Mesh axes that split the batch; a weight is gathered over them for its matmul (FSDP).
DATA_PARALLEL_AXES = ("data", "fsdp")


def _without(axes, drop: tuple[str, ...]):
    if axes is None:
        return None
    kept = tuple(a for a in ((axes,) if isinstance(axes, str) else axes) if a not in drop)
    return None if not kept else kept[0] if len(kept) == 1 else kept


#: The rules table as a matmul sees its weights: data-parallel axes gathered, ``tensor`` kept.
COMPUTE_RULES = tuple((name, _without(axes, DATA_PARALLEL_AXES)) for name, axes in LOGICAL_AXIS_RULES)


def gather_weight(w: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """A weight as its matmul uses it: all-gathered over the data-parallel axes, still split on
    ``tensor``; its gradient is constrained back to the parameter's own shards. Under a mesh
    this is FSDP's pattern (gather the cast weight for the forward pass) rather than leaving the
    choice to the partitioner, which may keep the weight sharded and all-reduce activations
    instead. No-op without a mesh.
    """
    return _gather(w, tuple(names)) if _mesh_active() else w


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _gather(w, names):
    return jax.lax.with_sharding_constraint(w, logical_to_spec(names, COMPUTE_RULES))


def _gather_fwd(w, names):
    return _gather(w, names), None


def _gather_bwd(names, _, g):
    # the gradient, summed over the data-parallel axes, lands in the parameter's own shards
    return (jax.lax.with_sharding_constraint(g, logical_to_spec(names)),)


_gather.defvjp(_gather_fwd, _gather_bwd)


def cast_floating(tree, dtype):
    """Cast every floating leaf of a pytree to ``dtype``."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)
