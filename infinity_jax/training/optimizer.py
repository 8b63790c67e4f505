"""The official optimisation recipe in optax.

* AdamW, betas (0.9, 0.97), eps 1e-8 (``train.sh``: ``--opt=adamw --ada=0.9_0.97``);
* peak learning rate ``tblr * global_batch / 256`` with ``tblr = 6e-3`` (``arg_util``);
* weight decay 0.005 on weight matrices only (:func:`decay_mask`);
* gradient clipping at global norm 5 (``--tclip=5``), as ``torch.nn.utils.clip_grad_norm_``;
* schedule: optional linear warm-up from ``warmup_init * peak``, then ``constant`` (the official
  ``lin0`` with ``wp~0, wpe=1`` is constant), ``lin0`` (flat for 5 % of the remaining steps, then
  linear to ``final_ratio * peak``) or ``cosine``.

:func:`build_optimizer` is the one builder of the three training loops (Infinity, the tokenizer,
the text encoder's pre-training); they differ only in settings and in ``decay_mask``.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

#: Parameter leaf names that take weight decay.
DECAY_LEAVES = ("kernel",)


def peak_learning_rate(optim_cfg, global_batch: int) -> float:
    """``lr`` if set, else ``tblr * global_batch / 256``."""
    lr = optim_cfg.get("lr")
    if lr:
        return float(lr)
    return float(optim_cfg.tblr) * global_batch / 256.0


def learning_rate_schedule(peak: float, total_steps: int, *, warmup_steps: int = 0, warmup_init: float = 0.005,
                           schedule: str = "constant", final_ratio: float = 1.0) -> Callable[[Any], jax.Array]:
    total_steps = max(int(total_steps), 1)
    warmup_steps = max(int(warmup_steps), 0)
    rest = max(total_steps - warmup_steps, 1)

    def after(s):
        f = jnp.clip(s / rest, 0.0, 1.0)
        if schedule == "constant":
            return jnp.asarray(peak, jnp.float32)
        if schedule == "lin0":
            g = jnp.clip((f - 0.05) / 0.95, 0.0, 1.0)
            return peak * (1 - g + g * final_ratio)
        if schedule == "cosine":
            return peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * f)))
        if schedule == "linear":
            return peak * (1 - f + f * final_ratio)
        raise ValueError(f"unknown learning-rate schedule {schedule!r} (constant, lin0, linear, cosine)")

    after(0)  # validate the name eagerly

    def fn(step):
        s = jnp.asarray(step, jnp.float32)
        if warmup_steps == 0:
            return jnp.asarray(after(s), jnp.float32)
        w = peak * (warmup_init + (1 - warmup_init) * jnp.clip(s / warmup_steps, 0.0, 1.0))
        return jnp.where(s < warmup_steps, w, after(s - warmup_steps)).astype(jnp.float32)

    return fn


def decay_mask(params) -> Any:
    """True on the leaves that take weight decay: the Linear kernels.

    The official parameter groups (``filter_params``) decay a parameter unless it has ndim <= 1
    (biases, norm weights, ``q_bias``/``v_bias``) or its name holds a ``nowd_keys`` entry
    (``cfg_uncond``, ``pos_start``, ``lvl_embed``, ``ada_gss``, ``scale_mul``,
    ``text_proj_for_sos.ca.mat_q``, ...). What that leaves in Infinity is exactly its Linear
    weights, our ``kernel`` leaves (``tests/training/test_train_step_parity.py`` checks every
    coefficient against the official step).
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: str(getattr(path[-1], "key", path[-1])) in DECAY_LEAVES, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_``: scale by ``min(1, max_norm / (norm + 1e-6))``."""

    def update(updates, state, params=None):
        del params
        coef = jnp.minimum(1.0, max_norm / (optax.global_norm(updates) + 1e-6))
        return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def ndim_decay_mask(params) -> Any:
    """True on the leaves with ndim >= 2 (convolution and Linear kernels): the tokenizer's groups."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def build_optimizer(lr, *, b1: float, b2: float, eps: float = 1e-8, weight_decay: float = 0.0, clip: float = 0.0,
                    decay_mask: Callable | None = decay_mask, torch_clip: bool = True) -> optax.GradientTransformation:
    """Global-norm clipping (``clip`` 0 = off) then AdamW with decoupled weight decay.

    ``lr``: a float or a schedule ``step -> lr``; ``decay_mask``: ``params -> bool tree`` of the
    leaves that take weight decay (None: all); ``torch_clip``: ``clip_grad_norm_``'s coefficient
    (:func:`clip_by_global_norm`), else ``optax.clip_by_global_norm``.
    """
    parts = []
    if clip and clip > 0:
        parts.append(clip_by_global_norm(float(clip)) if torch_clip else optax.clip_by_global_norm(float(clip)))
    parts.append(optax.adamw(lr, b1=float(b1), b2=float(b2), eps=float(eps), weight_decay=float(weight_decay),
                             mask=decay_mask))
    return optax.chain(*parts)


def make_optimizer(optim_cfg, lr_fn: Callable, decay_mask: Callable | None = decay_mask
                   ) -> optax.GradientTransformation:
    """:func:`build_optimizer` from a config's ``optim`` block (the official recipe by default)."""
    name = optim_cfg.get("name", "adamw")
    if name != "adamw":
        raise ValueError(f"unknown optimizer {name!r}; only 'adamw' (the official recipe) is implemented")
    return build_optimizer(lr_fn, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.get("eps", 1e-8),
                           weight_decay=optim_cfg.wd, clip=float(optim_cfg.clip or 0), decay_mask=decay_mask)
