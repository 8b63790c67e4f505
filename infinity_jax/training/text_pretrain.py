"""Denoising pre-training of a small T5 encoder on captions (where no pretrained T5 exists).

Infinity freezes a pretrained Flan-T5 and cross-attends to its hidden states. A randomly
initialised encoder gives features that name the words but barely encode their order or roles
("a red circle *to the left of* a blue square" vs the reverse). This module trains the encoder
alone with a masked-token (denoising) objective in the spirit of T5's span corruption, without
a decoder:

* every caption is tokenised (EOS appended) and padded to ``max_len``;
* each real token (EOS excluded) is replaced by the sentinel ``<extra_id_0>`` with probability
  ``mask_rate`` (at least one per caption);
* the encoder's last hidden states at the masked positions predict the original ids through the
  tied input embedding (``logits = h @ E^T * d_model**-0.5``, T5's tied-head scaling);
* AdamW (:func:`infinity_jax.training.optimizer.build_optimizer`: decay on every tensor, clipping
  at 1), warm-up then cosine decay, cross-entropy averaged over the masked positions; with
  ``keep_weight`` > 0 the same loss over the kept (unmasked) real tokens is added with that weight, so that every
  output names its own word (the features an image model reads), not only the masked ones.

Denoising alone cannot teach which colour goes with which shape (in captions they vary
independently); the order has to come from the positions, which the demo's tiny encoder gets as
learned absolute position embeddings (``T5Config.absolute_positions``).

:func:`pretrain_encoder` runs through the one training loop
(:class:`infinity_jax.training.loop.TrainLoop`, no workdir: nothing is checkpointed, SIGINT / SIGTERM
stop it without saving, a diverged run stops with :class:`~infinity_jax.training.loop.DivergedError`),
updates a Hugging Face T5 folder in place (``model.safetensors``) and writes ``pretrain.json`` with
its losses and masked-token accuracy on a held-out set of captions.
"""
from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from infinity_jax.text.convert import save_pretrained
from infinity_jax.text.t5 import load
from infinity_jax.text.sentencepiece import T5Tokenizer
from infinity_jax.training.loop import LoopSettings, Task, TrainLoop
from infinity_jax.training.optimizer import build_optimizer, learning_rate_schedule


def masked_batch(ids: np.ndarray, lens: np.ndarray, rng: np.random.Generator, mask_rate: float, mask_id: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt ``ids (B, L)`` (``lens`` real tokens per row, the last being EOS).

    Returns (corrupted ids, target mask ``(B, L)`` float32: 1 where a token was replaced).
    """
    B, L = ids.shape
    pos = np.arange(L)[None]
    maskable = pos < (lens[:, None] - 1)  # real tokens, EOS excluded
    m = (rng.random((B, L)) < mask_rate) & maskable
    none = ~m.any(1) & (lens > 1)
    if none.any():  # at least one masked token per caption
        pick = (rng.random(int(none.sum())) * (lens[none] - 1)).astype(int)
        m[np.flatnonzero(none), pick] = True
    out = np.where(m, mask_id, ids)
    return out.astype(np.int32), m.astype(np.float32)


def _loss(model, ids, mask, corrupted, target_mask, keep_weight: float = 0.0):
    """Cross-entropy at the masked positions (+ ``keep_weight`` x the same at the kept real tokens)."""
    h = model(corrupted, mask)                                            # (B, L, d)
    emb = model.embed[...].astype(jnp.float32)                            # (V, d)
    logits = jnp.einsum("bld,vd->blv", h, emb) * (h.shape[-1] ** -0.5)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids)
    n = jnp.maximum(jnp.sum(target_mask), 1.0)
    loss = jnp.sum(ce * target_mask) / n
    acc = jnp.sum((jnp.argmax(logits, -1) == ids) * target_mask) / n
    if keep_weight:
        kept = mask.astype(jnp.float32) * (1.0 - target_mask)
        loss = loss + keep_weight * jnp.sum(ce * kept) / jnp.maximum(jnp.sum(kept), 1.0)
    return loss, acc


def pretrain_encoder(folder: str | pathlib.Path, captions: Sequence[str], *, heldout: Sequence[str] = (),
                     steps: int = 400, batch_size: int = 128, mask_rate: float = 0.3, keep_weight: float = 0.0,
                     lr: float = 3e-3, weight_decay: float = 0.01, warmup_steps: int = 20, max_len: int = 16,
                     seed: int = 0, progress: bool = True) -> dict:
    """Train the T5 encoder in ``folder`` on ``captions`` (masked-token denoising); save it in place.

    Args:
      folder: a Hugging Face T5 folder (``config.json``, ``model.safetensors``, ``spiece.model``).
      captions: training sentences; ``heldout``: sentences to measure masked-token accuracy on.
      steps, batch_size, lr, weight_decay, warmup_steps: the optimisation (AdamW, cosine decay).
      mask_rate: probability of masking each real token.
      keep_weight: weight of the same loss at the real tokens that were not masked (0: masked
        positions only, as in T5). Only the masked positions' outputs are trained otherwise, so the
        features of the words an image model reads are left free to drop their own word; a weight
        makes every feature name its word, in context.
      max_len: tokens per caption, EOS included (longer captions are truncated).

    Returns:
      ``{"steps", "loss_first", "loss_last", "accuracy_last", "heldout_accuracy_before",
      "heldout_accuracy_after", "seconds"}`` (also written to ``folder/pretrain.json``).
    """
    folder = pathlib.Path(folder)
    if not captions:
        raise ValueError("pretrain_encoder needs at least one caption")
    t0 = time.perf_counter()
    tok = T5Tokenizer.from_folder(folder)
    model = load(folder)
    mask_id = tok.pieces.index("<extra_id_0>")
    batch = tok(list(captions), length=max_len, max_length=max_len)
    ids, lens, pad = np.asarray(batch.ids), np.asarray(batch.lens), np.asarray(batch.mask)
    rng = np.random.default_rng(seed)

    warm = max(warmup_steps, 1)
    sched = learning_rate_schedule(lr, max(steps, warm + 1), warmup_steps=warm, warmup_init=0.01,
                                   schedule="cosine", final_ratio=0.05)
    tx = build_optimizer(sched, b1=0.9, b2=0.98, eps=1e-8, weight_decay=weight_decay, clip=1.0, decay_mask=None,
                         torch_clip=False)
    gd, params = nnx.split(model, nnx.Param)

    @jax.jit
    def train_step(state, ids, mask, corrupted, target_mask):
        def f(p):
            return _loss(nnx.merge(gd, p), ids, mask, corrupted, target_mask, keep_weight)

        (loss, acc), g = jax.value_and_grad(f, has_aux=True)(state["params"])
        upd, opt = tx.update(g, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], upd), "opt_state": opt}, {"loss": loss, "accuracy": acc}

    @jax.jit
    def evaluate(params, ids, mask, corrupted, target_mask):
        return _loss(nnx.merge(gd, params), ids, mask, corrupted, target_mask)

    def heldout_accuracy(params) -> float | None:
        if not heldout:
            return None
        hb = tok(list(heldout), length=max_len, max_length=max_len)
        hi, hl, hm = np.asarray(hb.ids), np.asarray(hb.lens), np.asarray(hb.mask)
        accs = []
        for r in range(4):  # a few corruption draws
            c, tm = masked_batch(hi, hl, np.random.default_rng((seed, 99, r)), mask_rate, mask_id)
            accs.append(float(evaluate(params, hi, hm, c, tm)[1]))
        return float(np.mean(accs))

    def batches():
        while True:
            rows = rng.integers(0, len(ids), batch_size)
            c, tm = masked_batch(ids[rows], lens[rows], rng, mask_rate, mask_id)
            yield ids[rows], pad[rows], c, tm

    losses, accs = [], []

    def metrics(n, m, batch, dt):
        losses.append(m["loss"])
        accs.append(m["accuracy"])
        return {**m, "step_time": dt}

    before = heldout_accuracy(params)
    loop = TrainLoop(None, LoopSettings(total_steps=int(steps), max_nonfinite_steps=10,
                                        diverged_advice="lower the learning rate (lr)",
                                        logger={"progress": progress, "print_every": 20 if progress else 0,
                                                "format_fn": _format_line, "desc": "text encoder"}))
    loop.run(Task(batches=batches, init_state=lambda: {"params": params, "opt_state": tx.init(params)},
                  abstract_state=lambda: None, step=lambda state, b, n: train_step(state, *b), metrics=metrics))
    if loop.stopped_by:  # nothing is saved: no checkpoint exists for a half-trained encoder
        raise KeyboardInterrupt(f"text encoder pre-training stopped by signal {loop.stopped_by}")
    params = loop.state["params"]
    after = heldout_accuracy(params)
    nnx.update(model, params)
    save_pretrained(model, folder)
    k = max(1, min(20, len(losses) // 5))
    info = {"steps": int(steps), "batch_size": int(batch_size), "mask_rate": float(mask_rate),
            "keep_weight": float(keep_weight),
            "loss_first": float(np.mean(losses[:k])) if losses else math.nan,
            "loss_last": float(np.mean(losses[-k:])) if losses else math.nan,
            "accuracy_last": float(np.mean(accs[-k:])) if accs else math.nan,
            "heldout_accuracy_before": before, "heldout_accuracy_after": after,
            "seconds": time.perf_counter() - t0}
    (folder / "pretrain.json").write_text(json.dumps(info, indent=1))
    return info


def _format_line(step: int, m: dict) -> str:
    return f"step {step:>6d} | loss {m['loss']:.3f} masked-token accuracy {m['accuracy']:.3f}"


__all__ = ["masked_batch", "pretrain_encoder"]
