r"""Scaling sweeps: train a ladder of model sizes at matched compute, validate, fit power laws.

  # a toy sweep on the synthetic shapes data (CPU, < 1 hour on 2 cores), then the analysis
  python -m infinity_jax.scaling run --config configs/scaling_toy.py --workdir /tmp/sweep
  python -m infinity_jax.scaling analyze --workdir /tmp/sweep          # -> /tmp/sweep/analysis/
  # the official ladder on a pod, one job per size (every job runs the same command but --only)
  python -m infinity_jax.scaling run --config configs/scaling_official.py:pn=0.06M \
      --config.data.path=/data/shards --config.validation.path=/data/val_shards ... \
      --sizes layer12,layer16,layer24,layer32 --budget 1e20 --workdir gs://bucket/sweep --only layer24
  python -m infinity_jax.scaling plan ...      # the plan and one command per size, nothing trained

``--config`` is a trainer config (``configs/infinity.py`` schema) with two more sections: ``sweep``
(ladder: name -> ``config.model`` overrides; sizes, budget, mode, points, point_ratio, min_steps,
lr_scaling) and ``validation`` (the held-out set and the BSC settings), see ``configs/scaling_toy.py``.
Sizes are ladder names or official sizes (layer12 ... layer48, 2b, ...).

Layout of ``--workdir`` (each size is an ordinary trainer workdir, resumable by re-running)::

  sweep.json                      the whole plan (sizes, parameters, FLOPs per step, compute points)
  <size>/config.json, config.py   the size's trainer config (``python -m infinity_jax.train
                                  --config <size>/config.py --workdir <size>`` continues it by hand)
  <size>/plan.json                its steps and compute at every point
  <size>/checkpoints/ metrics.jsonl   written by the trainer
  <size>/validation.jsonl         one record per compute point (means, per-scale lists, SEs)
  <size>/validation/step_XXXXXXXX.npz   per-image metrics (for the bootstrap)
  analysis/                       written by ``analyze``: PNG plots, CSV and Markdown tables, fits.json

Compute is counted analytically: ``infinity_jax.transformer.flops.train_flops`` (matmul FLOPs of
forward + backward, 3x forward) of the size's schedule and padded caption length, times the global
batch, per step; the frozen tokenizer and text encoder are not counted (as in the trainer's MFU).

Schedules (``--mode``):

* ``iso_flop`` (default): every size gets the same ``--budget`` of training FLOPs, so a smaller model
  takes proportionally more steps; validation at ``points`` compute values ``budget / ratio**j``
  (steps rounded, at least ``min_steps``), the same for every size, so losses are compared at equal
  compute. The learning-rate schedule of each run spans its own steps (warm-up then, by default,
  the official constant rate, so intermediate points are not biased by a decay).
* ``iso_steps``: every size trains the same number of steps (``budget`` / FLOPs per step of the
  largest size), as the Infinity paper's model-scaling runs; validation at the shared compute grid
  points each size reaches, plus its last step.

Learning rate: the config's (official: the same ``tblr`` for every size), or with
``sweep.lr_scaling=inverse_width`` the configured rate at ``sweep.lr_base_width`` scaled as
``base_width / width``.

Each compute point: the trainer's :meth:`Trainer.train` runs (resuming from the previous point's
checkpoint) to the point's step, then :class:`infinity_jax.eval.validation.Validator` evaluates the
held-out set (BSC strength 0.2 on every scale, per-scale loss and bit accuracy).

``analyze`` fits ``L = E + A x^-alpha`` to loss against parameters (at every compute point with
enough sizes; the headline is the largest) and against compute (the frontier: the lowest loss at
each compute point), with asymptotic standard errors and a paired bootstrap over the held-out
images, and the compute-optimal size ``N_opt ~ C^a``.
"""
from __future__ import annotations
