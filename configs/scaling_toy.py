r"""A toy scaling sweep on the synthetic ``shapes`` data that runs on a laptop CPU.

  python -m infinity_jax.scaling run --config configs/scaling_toy.py --workdir /tmp/sweep
  python -m infinity_jax.scaling run --config configs/scaling_toy.py --sizes s2,s3,s4,s5 --budget 4e12 \
      --workdir /tmp/sweep
  python -m infinity_jax.scaling analyze --workdir /tmp/sweep

It is an ordinary trainer config (``configs/infinity.py``, ``size=tiny,runlocal=True``: random
tokenizer encoder, hashed random caption features, no downloads) on 64x64 shapes images with a
four-scale schedule (1, 2, 3, 4 tokens a side: 30 tokens), plus two sections the sweep runner reads:

* ``sweep``: the ladder (name -> ``config.model`` overrides), the default sizes, the compute budget
  per size (training FLOPs, analytic) and the compute points where validation runs;
* ``validation``: the held-out set (shapes drawn with another seed, never trained on), Bitwise
  Self-Correction at strength 0.2 on every scale, as the official ``validation_loss.py``.

The toy ladder (s1 ... s8: 45k to 16M parameters) has the official block (head dim 32, MLP 4x) at
depths 1-6 and widths 32-384. Arguments: ``sizes`` (``+``-separated ladder names; default s1..s5), ``budget`` (FLOPs), ``mode``
(``iso_steps`` or ``iso_flop``), ``batch`` (global batch), ``points`` (compute grid points), ``lr`` (peak
rate at width 128), ``lr_scaling`` (``inverse_width`` or ``none``: the same rate for every size).
"""
import importlib.util
import os

import ml_collections

#: The toy ladder: name -> (depth, embed_dim, num_heads, mlp_ratio). Head dim 32; MLP 4x where the
#: 256-multiple rounding of the official MLP width allows (s1: 8x, s3: 5.3x).
TOY_LADDER = {
    "s1": (1, 32, 1, 8.0),
    "s2": (1, 64, 2, 4.0),
    "s3": (2, 96, 3, 4.0),
    "s4": (2, 128, 4, 4.0),
    "s5": (3, 192, 6, 4.0),
    "s6": (4, 256, 8, 4.0),
    "s7": (5, 320, 10, 4.0),
    "s8": (6, 384, 12, 4.0),
}


def _base_config():
    """``configs/infinity.py:size=tiny,runlocal=True`` (the trainer's own config schema)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "infinity.py")
    spec = importlib.util.spec_from_file_location("_infinity_base_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config("size=tiny,runlocal=True,text=random"), mod.parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c, parse_arg = _base_config()
    args = parse_arg(arg, sizes="s1+s2+s3+s4+s5", budget=4.075e12, batch=16, points=12, mode="iso_steps", lr=1.5e-3,
                     lr_scaling="inverse_width")

    # ---------------------------------------------------------------- the training run (per size)
    c.size = "tiny"
    c.schedule = ((1, 1), (2, 2), (3, 3), (4, 4))  # 64x64 images, 30 tokens
    c.model = ml_collections.ConfigDict(dict(
        depth=1, embed_dim=64, num_heads=2, mlp_ratio=4.0, codebook_dim=16, text_channels=64, text_maxlen=16,
        block_chunks=1, scan_blocks=False, remat=False, dtype="float32", drop_path_rate=0.0, cond_drop_rate=0.1))
    c.tokenizer.update(base_ch=32, num_res_blocks=1, in_step=True)  # d = model.codebook_dim
    c.text.update(source="random", max_len=16, short_caption_prob=0.0)
    c.data.source = "factory"
    c.data.factory = "infinity_jax.data.shapes:ShapesSource"
    c.data.factory_kwargs = dict(size=64, seed=0, length=1_000_000, spec_format=None)
    c.data.update(seed=0, shuffle=True, num_threads=2, prefetch=4, workers=0)
    c.batch_size = args.batch
    c.total_steps = 0  # set per size by the sweep runner from the compute budget
    # Official optimiser (AdamW 0.9/0.97, wd 0.005, clip 5) at a toy learning rate with a short warm-up
    # and a constant rate afterwards (as the official recipe), so intermediate points are unbiased.
    c.optim.update(lr=args.lr, warmup_steps=50, schedule="constant")
    c.bsc.update(enabled=True, strength=0.3, apply_layers=13)
    c.checkpoint.update(every=100_000, keep=2, async_save=False)
    c.log.update(every=100, tensorboard=False, progress=False)

    # ---------------------------------------------------------------------------------- the sweep
    c.sweep = ml_collections.ConfigDict()
    c.sweep.ladder = {k: dict(depth=d, embed_dim=w, num_heads=h, mlp_ratio=r) for k, (d, w, h, r) in TOY_LADDER.items()}
    c.sweep.sizes = args.sizes.replace("+", ",")
    # Compute (training FLOPs, analytic: infinity_jax.transformer.flops.train_flops x batch x steps).
    # iso_steps: every size sees the same images (the Infinity paper's model-scaling protocol): the
    # budget is the largest size's run (s5: 5.09e9 FLOPs/step at batch 16 -> 800 steps) and the
    # smaller sizes stop at proportionally less compute. (iso_flop -- the same budget for every size --
    # makes the smallest size take 56x the steps of the largest: hours on a CPU.)
    # Beyond s5 (2.2M parameters) this toy task is data-limited at 800 steps: s6 and s7 end within one
    # standard error of s5.
    c.sweep.mode = args.mode
    c.sweep.budget = float(args.budget)
    # Validation at the compute grid budget / 2**j (j = 0 .. points-1) wherever a size's run passes
    # it (at least min_steps steps), plus at its last step.
    c.sweep.points = int(args.points)
    c.sweep.point_ratio = 2.0
    c.sweep.min_steps = 20
    # Peak learning rate optim.lr at width 128 (s4), scaled as 128 / width for the others (Adam's best
    # rate falls about as 1/width; one rate for all sizes leaves the widest undertrained at 800 steps).
    c.sweep.lr_scaling = args.lr_scaling
    c.sweep.lr_base_width = 128

    # ----------------------------------------------------------------------- the held-out set
    c.validation = ml_collections.ConfigDict(dict(
        num_images=256, batch_size=32, strength=0.2, fixed_strength=False, apply_layers=20, requant=True, seed=1234,
        use_ema=False,
        # held-out images: the same generator with another seed (never seen in training)
        source="factory", factory="infinity_jax.data.shapes:ShapesSource",
        factory_kwargs=dict(size=64, seed=777, length=256, spec_format=None), path=""))
    return c
