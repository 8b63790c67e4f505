r"""BSQ-VAE tokenizer training (``python -m infinity_jax.train_tokenizer``).

  # the demo's tiny tokenizer on the synthetic shapes data (32x32 images, patch 2, d=16):
  python -m infinity_jax.train_tokenizer --config configs/tokenizer.py:preset=shapes --workdir /tmp/tok
  # an official-sized d=32 stride-16 tokenizer on ArrayRecord shards (GPU/TPU):
  python -m infinity_jax.train_tokenizer --config configs/tokenizer.py:preset=official \
      --config.data.path=/data/shards --workdir /w/tok

Arguments: ``preset`` (shapes, official), ``quick`` (a seconds-long smoke run), ``runlocal``
(shapes preset, a few steps). Any field can be overridden with ``--config.<key>=<value>``.
Running the same command again resumes; the result is ``WORKDIR/tokenizer.safetensors`` (official
state_dict names), usable as the Infinity trainer's ``--config.tokenizer.checkpoint``.

Loss defaults follow the official ``vae_model`` namespace / bsq-vit where they are known
(architecture note §1.4, §1.6): Adam (0.9, 0.95), grad clip 1, L1 recon, commitment 0.25,
entropy 0.1 (gamma0 = gamma = 1). The perceptual term is a random-feature *proxy* (no VGG/LPIPS
weights can be downloaded) and the GAN is off unless ``loss.gan.weight > 0``.
"""
import importlib.util
import pathlib

import ml_collections

_HERE = pathlib.Path(__file__).resolve().parent


def _infinity_config():
    spec = importlib.util.spec_from_file_location("_tokenizer_infinity_config", _HERE / "infinity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: ``'a=1,b=True,c=x'`` -> ConfigDict (the variant-string parser of ``configs/infinity.py``).
parse_arg = _infinity_config().parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = parse_arg(arg, preset="shapes", quick=False, runlocal=False)
    c = ml_collections.ConfigDict()
    c.seed = 0

    # The model (infinity_jax.tokenizer.VAEConfig) and the latent scale schedule it is trained on.
    c.model = ml_collections.ConfigDict(dict(codebook_dim=32, base_ch=128, ch_mult=(1, 2, 4, 4, 4), num_res_blocks=2,
                                             patch_size=16, dtype="float32"))
    # (h, w) latent grids; the image size is patch_size * the last grid.
    c.schedule = ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16))
    c.crop = 0  # train on random patch-aligned crops of this side (0: whole images)
    c.init = ml_collections.ConfigDict(dict(feature_rms=1.0, zero_init_residual=True))

    # Data: the Infinity trainer's sources (data.source: arrayrecord, tfds, synthetic, factory).
    c.data = ml_collections.ConfigDict(dict(
        source="arrayrecord", path="",
        tfds=dict(name="", data_dir="", split="train", image_key="image", caption_key="caption"),
        synthetic=dict(num_records=1024, sizes=((256, 256),), seed=0, corrupt=()),
        factory="", factory_kwargs={},
        seed=0, shuffle=True, num_epochs=0, num_threads=4, prefetch=4, workers=0))

    c.batch_size = 32
    c.total_steps = 100_000
    c.optim = ml_collections.ConfigDict(dict(lr=1e-4, b1=0.9, b2=0.95, wd=0.0, clip=1.0, warmup_steps=1000,
                                             warmup_init=0.01, schedule="constant", final_ratio=0.1, ema_decay=0.0))
    c.loss = ml_collections.ConfigDict(dict(
        l1=4.0, l2=0.0, commit=0.25,
        entropy=dict(weight=0.1, group_size=8, inv_temperature=100.0, gamma0=1.0, gamma=1.0, persample="group"),
        early_scales=dict(weight=0.0),
        edge=dict(weight=0.0),
        perceptual=dict(weight=0.0, seed=1234),
        gan=dict(weight=0.0, start=20_000, lr=0.0, base_ch=64, n_layers=3)))
    # Held-out PSNR: ``factory`` (a built-in name such as "shapes_heldout" or 'module:callable',
    # returning uint8 images (N, H, W, 3); see infinity_jax.data.sources).
    c.eval = ml_collections.ConfigDict(dict(every=1000, num_images=0, factory="", factory_kwargs={}))
    c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=2, async_save=True))
    c.log = ml_collections.ConfigDict(dict(every=50, tensorboard=True, progress=True))

    if args.preset == "shapes":
        shapes(c)
    elif args.preset != "official":
        raise ValueError(f"unknown preset {args.preset!r} (shapes, official)")
    if args.quick or args.runlocal:
        c.total_steps = 6 if args.runlocal else 40
        c.batch_size = 8
        c.optim.warmup_steps = 2
        c.checkpoint.every = 3 if args.runlocal else 20
        c.eval.every = c.total_steps
        c.eval.num_images = 16
        c.log.every = 1 if args.runlocal else 10
        c.data.factory_kwargs.length = 4096
    return c


def shapes(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The embedded demo's tokenizer: 32x32 shapes images, patch 2 (16x16 latent), d=16, on 2 CPU cores.

    Notes from tuning on CPU (held-out reconstructions scored by the shapes evaluator, 600 steps):
    the latent grid matters more than the bits: 16x16 x 16 bits scores 0.76 where 8x8 x 16 bits
    scores ~0.5 (at 1500 steps) and 8x8 x 64 bits 0.32 (small stars turn into discs); the edge loss
    helps (0.49 -> 0.60 at 8x8). GroupNorm here has 32 groups, so widths are >= 48 (two channels
    per group; with one the norms erase the colour of flat regions); Adam at 2e-4 learns much
    faster than at 1e-3+; zero-initialised residual branches help.
    """
    c.model.update(codebook_dim=16, base_ch=48, ch_mult=(1, 2), num_res_blocks=1, patch_size=2)
    c.schedule = ((1, 1), (2, 2), (4, 4), (8, 8), (16, 16))
    c.crop = 0
    c.data.update(source="factory", factory="shapes",
                  factory_kwargs=dict(size=32, seed=0, length=200_000), num_threads=2, prefetch=2)
    c.batch_size = 8
    c.total_steps = 1200
    c.optim.update(lr=2e-4, warmup_steps=10, schedule="cosine", final_ratio=0.1, ema_decay=0.0)
    c.loss.update(l1=1.0, l2=1.0, commit=0.0)
    c.loss.edge.weight = 1.0
    c.eval.update(every=400, num_images=86, factory="shapes_heldout",
                  factory_kwargs=dict(size=32, seeds=1))
    c.checkpoint.update(every=200, keep=2)
    c.log.every = 100
    return c
