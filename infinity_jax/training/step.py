"""The body of one Infinity training step as two pure functions.

:class:`~infinity_jax.training.trainer.Trainer` builds its compiled step from them, and the
fixture runner (``infinity_jax.tools.run_fixture``) uses the same two to recompute one official
training step, so the parity check covers the code that trains:

* :func:`loss_and_grads`: teacher-forced forward, bitwise cross-entropy (``infinity_loss``) and
  the gradients of the training objective, before clipping;
* :func:`apply_update`: the global gradient norm and one optimizer update (clipping, AdamW and
  weight decay live in ``tx``, from :func:`infinity_jax.training.optimizer.make_optimizer`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import optax

from infinity_jax.transformer.loss import LossOutput, infinity_loss


def loss_and_grads(merge: Callable[[Any], Any], params: Any, text: jax.Array, text_mask: jax.Array,
                   x_BLC_wo_prefix: jax.Array, labels: jax.Array, scales: Sequence[Sequence[int]], *,
                   rng: jax.Array | None = None, deterministic: bool = False, reweight: bool = True,
                   label_smoothing: float = 0.0) -> tuple[LossOutput, Any]:
    """The loss and its gradients w.r.t. ``params`` (same tree), before clipping.

    ``merge(params)`` returns the model; ``text (B, T, Ct)``, ``text_mask (B, T)``,
    ``x_BLC_wo_prefix (B, L-1, d or 4d)`` the teacher-forced input (after Bitwise
    Self-Correction), ``labels (B, L, d or 4d)`` the bits; ``rng`` drives caption dropout and
    drop-path when not ``deterministic``.
    """

    def objective(p):
        model = merge(p)
        logits = model(text, text_mask, x_BLC_wo_prefix, scales, rng=rng, deterministic=deterministic)
        out = infinity_loss(logits, labels, scales, reweight=reweight, label_smoothing=label_smoothing)
        return out.loss, out

    (_, out), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return out, grads


def apply_update(tx: optax.GradientTransformation, params: Any, opt_state: Any,
                 grads: Any) -> tuple[Any, Any, jax.Array]:
    """One optimizer step from raw ``grads`` -> ``(new params, new opt_state, grad norm before clipping)``."""
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, grad_norm
