"""The official optimisation recipe: AdamW (0.9, 0.97), lr 6e-3 * B / 256, wd on matrices, clip 5."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from train_helpers import load_config

from infinity_jax.sharding import make_mesh
from infinity_jax.training.optimizer import decay_mask, learning_rate_schedule, make_optimizer, peak_learning_rate
from infinity_jax.training.trainer import Trainer


def test_train_default_recipe_is_official():
    c = load_config("size=2b")
    assert (c.optim.b1, c.optim.b2, c.optim.eps) == (0.9, 0.97, 1e-8)
    assert (c.optim.tblr, c.optim.wd, c.optim.clip, c.optim.ema_decay, c.optim.warmup_steps) == (6e-3, 0.005, 5.0, 0.0, 0)
    assert c.bsc.enabled and c.bsc.strength == 0.3 and c.loss.reweight_by_scale
    assert peak_learning_rate(c.optim, 256) == 6e-3 and peak_learning_rate(c.optim, 32) == 7.5e-4
    c.optim.lr = 1e-4
    assert peak_learning_rate(c.optim, 32) == 1e-4


def test_train_weight_decay_only_on_matrices():
    tr = Trainer(load_config(), None, mesh=make_mesh({"data": 1}, devices=jax.devices()[:1]))
    from infinity_jax.training.state import state_to_tree

    params = state_to_tree(tr.md.abstract)
    mask = decay_mask(params)
    flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
    decayed = sorted(k for k, m in flat.items() if m)
    assert all(k.endswith("['kernel']") for k in decayed)
    for name in ("cfg_uncond", "pos_start", "lvl_embed", "ada_gss", "['text_pool']['mat_q']", "scale_mul", "bias",
                 "text_norm_scale", "ca_norm_scale"):
        assert not any(name in k for k in decayed), name
    assert "['word_embed']['kernel']" in decayed and "['head']['kernel']" in decayed
    assert "['blocks']['sa']['mat_qkv']['kernel']" in decayed
    # one step with zero gradients: only kernels shrink, by lr * wd
    tx = make_optimizer(tr.config.optim, lambda s: 0.1)
    p = {"w": {"kernel": jnp.ones((2, 2))}, "b": {"bias": jnp.ones(2)}, "cfg_uncond": jnp.ones((2, 2))}
    upd, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
    new = optax.apply_updates(p, upd)
    np.testing.assert_allclose(new["w"]["kernel"], 1 - 0.1 * 0.005, rtol=1e-6)
    np.testing.assert_array_equal(new["b"]["bias"], 1.0)
    np.testing.assert_array_equal(new["cfg_uncond"], 1.0)


def test_train_gradients_are_clipped_at_5():
    c = load_config()
    p = {"kernel": jnp.zeros(4)}
    grads = [{"kernel": jnp.full(4, 100.0)}, {"kernel": jnp.array([1.0, -1.0, 0.5, 0.0])}]

    def run(tx):
        s, out = tx.init(p), None
        for g in grads:
            out, s = tx.update(g, s, p)
        return np.asarray(out["kernel"])

    ours = run(make_optimizer(c.optim, lambda s: 1.0))
    adam = optax.adamw(1.0, b1=0.9, b2=0.97, eps=1e-8, weight_decay=0.005)
    np.testing.assert_allclose(ours, run(optax.chain(optax.clip_by_global_norm(5.0), adam)), rtol=1e-6)
    assert not np.allclose(ours, run(adam))


def test_train_learning_rate_schedules():
    const = learning_rate_schedule(1.0, 100)
    assert float(const(0)) == float(const(99)) == 1.0
    warm = learning_rate_schedule(1.0, 100, warmup_steps=10, warmup_init=0.005)
    np.testing.assert_allclose([float(warm(s)) for s in (0, 5, 10, 50)], [0.005, 0.5025, 1.0, 1.0], rtol=1e-6)
    lin0 = learning_rate_schedule(1.0, 100, schedule="lin0", final_ratio=0.1)
    assert float(lin0(4)) == 1.0 and abs(float(lin0(100)) - 0.1) < 1e-6 and 0.1 < float(lin0(50)) < 1.0
    cos = learning_rate_schedule(2.0, 100, schedule="cosine", final_ratio=0.0)
    np.testing.assert_allclose([float(cos(0)), float(cos(50)), float(cos(100))], [2.0, 1.0, 0.0], atol=1e-6)
