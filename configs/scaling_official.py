r"""A scaling sweep over the official ladder (layer12 ... layer48) on real data, for pods.

  python -m infinity_jax.scaling plan --config configs/scaling_official.py:pn=0.06M \
      --config.data.path=/data/shards --config.validation.path=/data/val_shards \
      --config.tokenizer.checkpoint=/w/infinity_vae_d32_rdn_short.pth --config.text.t5_path=/w/flan-t5-xl \
      --sizes layer12,layer16,layer24,layer32 --budget 3e20 --workdir gs://bucket/sweep
  # then one job per size (the plan prints the commands: the same line with `run` and --only=<size>),
  # or every size in turn in one job with `run`; finally
  python -m infinity_jax.scaling analyze --workdir gs://bucket/sweep

The training run of each size is ``configs/infinity.py`` (the official recipe) at that size; the
``sweep`` section sets the compute budget and points, the ``validation`` section the held-out
set: ArrayRecord shards (``validation.path``; the same format as the training data) evaluated as
the official ``validation_loss.py`` (full captions, BSC strength 0.2 on every scale).
Arguments: those of ``configs/infinity.py`` (``pn``, ``data``, ``text``, ``runlocal``) plus ``budget``
(training FLOPs per size), ``mode`` (``iso_flop`` or ``iso_steps``), ``points``; the sizes with
``--sizes`` (default layer12, layer16, layer24, layer32).
"""
import importlib.util
import os

import ml_collections


def _infinity():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "infinity.py")
    spec = importlib.util.spec_from_file_location("_infinity_base_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    base = _infinity()
    mine = dict(budget=1e20, mode="iso_flop", points=5)
    theirs, ours = [], []
    for item in filter(None, (arg or "").split(",")):
        (ours if item.partition("=")[0] in mine else theirs).append(item)
    args = base.parse_arg(",".join(ours), **mine)
    sizes = "layer12,layer16,layer24,layer32"  # or --sizes
    c = base.get_config(",".join(["size=layer12"] + theirs))

    c.sweep = ml_collections.ConfigDict(dict(
        ladder={}, sizes=sizes, budget=float(args.budget), mode=args.mode, points=int(args.points),
        point_ratio=2.0, min_steps=50))
    c.checkpoint.update(every=2000, keep=2)
    c.log.update(every=50, progress=False)
    c.validation = ml_collections.ConfigDict(dict(
        num_images=1024, batch_size=32, strength=0.2, fixed_strength=False, apply_layers=20, requant=True, seed=1234,
        use_ema=False,
        h_div_w=1.0, source="arrayrecord", path="", factory="", factory_kwargs={}))
    if c.data.source == "factory":  # e.g. data=shapes: held-out shapes from another seed
        c.validation.update(source="factory", factory=c.data.factory,
                            factory_kwargs=dict(c.data.factory_kwargs, seed=777, length=1024))
    elif c.data.source == "synthetic":
        c.validation.update(source="synthetic", synthetic=dict(c.data.synthetic.to_dict(), seed=777))
    return c
