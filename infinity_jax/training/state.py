"""The train state as a plain pytree, created directly in its shardings.

The NNX model is split once (MaxText style): a static ``graphdef`` plus an abstract
``nnx.State`` (shapes and logical axis names) kept on the host; the arrays live in a nested dict
with string keys (``params["blocks"]["sa"]["mat_qkv"]["kernel"]``), which is what the optimizer,
the jitted step and Orbax see::

    state = {"step": int32 (), "params": tree, "opt_state": optax state, ["ema": tree]}

Every array is created by a ``jax.jit`` whose ``out_shardings`` are the target NamedShardings,
so no parameter or optimizer moment is ever materialised whole on one device.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from infinity_jax.sharding import LOGICAL_AXIS_RULES, state_shardings


def _key(k) -> str:
    return str(getattr(k, "key", k))


def state_to_tree(state: nnx.State) -> dict:
    """nnx.State (of Variables) -> nested dict with string keys of the Variables' values."""
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        d = out
        for k in path[:-1]:
            d = d.setdefault(_key(k), {})
        d[_key(path[-1])] = var.get_value() if hasattr(var, "get_value") else var
    return out


def tree_to_state(template: nnx.State, tree: dict) -> nnx.State:
    """Put the values of ``tree`` into the Variables of ``template`` (same paths)."""
    pairs = []
    for path, var in nnx.to_flat_state(template):
        v = tree
        for k in path:
            v = v[_key(k)]
        pairs.append((path, var.replace(v)))
    return nnx.from_flat_state(pairs)


@dataclasses.dataclass
class ModelDef:
    """A split NNX model: ``graphdef``, abstract state, and the param tree's shardings on ``mesh``."""

    graphdef: Any
    abstract: nnx.State
    shardings: dict
    mesh: Mesh

    def merge(self, params: dict):
        return nnx.merge(self.graphdef, tree_to_state(self.abstract, params))

    def abstract_params(self) -> dict:
        return jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                            state_to_tree(self.abstract), self.shardings)

    def param_bytes(self) -> tuple[int, int]:
        """(total bytes, bytes on the most loaded device) of the parameters."""
        total = 0
        per_dev: dict = {}
        for v, s in zip(jax.tree.leaves(state_to_tree(self.abstract)), jax.tree.leaves(self.shardings)):
            nbytes = int(np.prod(v.shape)) * jnp.dtype(v.dtype).itemsize
            total += nbytes
            shard = s.shard_shape(v.shape)
            for d in s.device_set:
                per_dev[d] = per_dev.get(d, 0) + int(np.prod(shard)) * jnp.dtype(v.dtype).itemsize
        return total, max(per_dev.values())


def split_model(factory: Callable[[], nnx.Module], mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> ModelDef:
    """Abstractly build ``factory()`` and derive the shardings of its parameters on ``mesh``."""
    abstract_model = nnx.eval_shape(factory)
    graphdef, params, rest = nnx.split(abstract_model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"the model holds non-parameter state, which the trainer does not handle: {rest}")
    graphdef = nnx.split(abstract_model)[0]
    shard_state = state_shardings(params, mesh, rules)
    return ModelDef(graphdef, params, state_to_tree(shard_state), mesh)


def init_params(md: ModelDef, factory: Callable[[], nnx.Module]) -> dict:
    """Initialise the parameters inside ``jax.jit(out_shardings=...)``: born sharded."""

    def init():
        return state_to_tree(nnx.split(factory(), nnx.Param, ...)[1])

    return jax.jit(init, out_shardings=md.shardings)()


def place_params(md: ModelDef, tree: dict) -> dict:
    """Host (numpy or single-device) parameters -> arrays in ``md``'s shardings, leaf by leaf."""
    want = state_to_tree(md.abstract)

    def put(v, a, s):
        a = np.asarray(jax.device_get(a))
        if a.shape != tuple(v.shape):
            raise ValueError(f"parameter shape {a.shape} != model shape {tuple(v.shape)}")
        return jax.device_put(a.astype(v.dtype), s)

    return jax.tree.map(put, want, tree, md.shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def opt_state_shardings(tx: optax.GradientTransformation, md: ModelDef) -> Any:
    """Shardings of ``tx.init(params)``: moments like their parameters, the rest replicated.

    Shapes only (``jax.eval_shape``), so it works for a mesh of compile-only devices (an AOT
    topology): every subtree of the optimizer state with the parameters' tree structure and shapes
    (AdamW's ``mu`` / ``nu``) takes the parameters' shardings; every other leaf is replicated.
    """
    abs_params = md.abstract_params()
    abs_opt = jax.eval_shape(tx.init, abs_params)
    param_def = jax.tree.structure(abs_params)
    param_shapes = [tuple(a.shape) for a in jax.tree.leaves(abs_params)]
    rep = replicated(md.mesh)

    def like_params(node) -> bool:
        if jax.tree.structure(node) != param_def:
            return False
        return [tuple(a.shape) for a in jax.tree.leaves(node)] == param_shapes

    return jax.tree.map(lambda node: md.shardings if like_params(node) else rep, abs_opt, is_leaf=like_params)


def train_state_shardings(tx, md: ModelDef, ema: bool) -> dict:
    sh = {"step": replicated(md.mesh), "params": md.shardings, "opt_state": opt_state_shardings(tx, md)}
    if ema:
        sh["ema"] = md.shardings
    return sh


def create_train_state(tx, md: ModelDef, params: dict, ema: bool) -> dict:
    """Optimizer state (and EMA copy) created in their shardings from sharded ``params``."""
    sh = train_state_shardings(tx, md, ema)

    def make(p):
        st = {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)}
        if ema:
            st["ema"] = jax.tree.map(jnp.copy, p)
        return st

    return jax.jit(make, in_shardings=(md.shardings,), out_shardings=sh, donate_argnums=(0,))(params)


def init_train_state(tx, md: ModelDef, factory: Callable[[], nnx.Module], ema: bool) -> dict:
    """Random parameters and their optimizer state in one ``jax.jit`` with ``out_shardings``."""
    sh = train_state_shardings(tx, md, ema)

    def make():
        p = state_to_tree(nnx.split(factory(), nnx.Param, ...)[1])
        st = {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)}
        if ema:
            st["ema"] = jax.tree.map(jnp.copy, p)
        return st

    return jax.jit(make, out_shardings=sh)()


def abstract_train_state(tx, md: ModelDef, ema: bool) -> dict:
    """ShapeDtypeStructs with shardings of the train state (the restore target)."""
    sh = train_state_shardings(tx, md, ema)
    abs_params = md.abstract_params()

    def make(p):
        st = {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)}
        if ema:
            st["ema"] = p
        return st

    shapes = jax.eval_shape(make, abs_params)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, sh)


def tree_bytes_per_device(tree) -> dict:
    """Bytes of the addressable shards of ``tree``'s arrays, per device."""
    out: dict = {}
    for a in jax.tree.leaves(tree):
        for sh in getattr(a, "addressable_shards", []):
            out[sh.device] = out.get(sh.device, 0) + sh.data.nbytes
    return out
