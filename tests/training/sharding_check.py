"""Run in a subprocess with 8 simulated CPU devices (see test_train_sharding.py).

One training step of the tiny config on one device and on a (data 2, fsdp 2, tensor 2) mesh from
the same initial parameters and batch; then the per-device parameter bytes under fsdp=8.
Prints one JSON line.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from train_helpers import load_config  # noqa: E402

from infinity_jax.sharding import make_mesh  # noqa: E402
from infinity_jax.training.state import tree_bytes_per_device  # noqa: E402
from infinity_jax.training.trainer import Trainer  # noqa: E402


def main():
    assert jax.device_count() == 8, jax.devices()
    config = load_config(batch_size=8)
    out = {}
    results = {}
    batch = None
    for name, shape, devices in (("1dev", {"data": 1}, jax.devices()[:1]),
                                 ("2x2x2", {"data": 2, "fsdp": 2, "tensor": 2}, None)):
        tr = Trainer(config, None, mesh=make_mesh(shape, devices=devices))
        if batch is None:
            batch = next(tr.build_pipeline())
        state = tr.init_state()
        init = jax.device_get(state["params"])
        state, metrics = tr.train_step(state, batch)
        results[name] = (init, jax.device_get(state["params"]), jax.device_get(metrics),
                         jax.device_get(state["opt_state"]))
        specs = {jax.tree_util.keystr(p): str(a.sharding.spec)
                 for p, a in jax.tree_util.tree_leaves_with_path(state["params"])}
        out[f"specs_{name}"] = {k: v for k, v in list(specs.items())[:6]}
    a, b = results["1dev"], results["2x2x2"]
    diff = lambda x, y: max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
                            for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
    rel = lambda x, y: max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64)))
                                 / (np.max(np.abs(np.asarray(u, np.float64))) + 1e-30))
                           for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
    out.update(init_max_abs_diff=diff(a[0], b[0]), params_max_abs_diff=diff(a[1], b[1]),
               params_max_rel_diff=rel(a[1], b[1]), opt_state_max_abs_diff=diff(a[3], b[3]),
               loss_1dev=float(a[2]["loss"]), loss_2x2x2=float(b[2]["loss"]),
               loss_abs_diff=abs(float(a[2]["loss"]) - float(b[2]["loss"])),
               grad_norm_1dev=float(a[2]["grad_norm"]), grad_norm_2x2x2=float(b[2]["grad_norm"]),
               per_scale_loss_max_diff=float(np.max(np.abs(a[2]["per_scale_loss"] - b[2]["per_scale_loss"]))))

    # fsdp=8: parameters and optimizer moments are born sharded; bytes per device ~ 1/8 of the total.
    tr = Trainer(config, None, mesh=make_mesh({"fsdp": 8}))
    state = tr.init_state()
    total = sum(int(x.nbytes) for x in jax.tree.leaves(state["params"]))
    per_dev = tree_bytes_per_device(state["params"])
    opt_per_dev = tree_bytes_per_device(state["opt_state"])
    opt_total = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state["opt_state"]))
    out.update(fsdp8_param_total_bytes=total, fsdp8_param_bytes_per_device=sorted(per_dev.values()),
               fsdp8_param_fraction_max=max(per_dev.values()) / total,
               fsdp8_opt_total_bytes=opt_total, fsdp8_opt_fraction_max=max(opt_per_dev.values()) / opt_total,
               fsdp8_analytic=list(tr.md.param_bytes()))
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
