r"""Infinity text-to-image training: the official recipe, one file from a CPU smoke run to a pod.

  # CPU smoke run (random tokenizer, random text features, synthetic images, a 3-scale schedule):
  python -m infinity_jax.train --config configs/infinity.py:size=layer12,runlocal=True --workdir /tmp/w
  # real run: ArrayRecord shards (python -m infinity_jax.data.writer), official VAE and Flan-T5-XL
  python -m infinity_jax.train --config configs/infinity.py:size=2b,pn=0.06M \
      --config.data.path=/data/shards --config.tokenizer.checkpoint=/w/infinity_vae_d32_rdn_short.pth \
      --config.text.t5_path=/w/flan-t5-xl --config.batch_size=256 --workdir gs://bucket/run1
  # model statistics
  python -m infinity_jax.tools.model_stats --config configs/infinity.py:size=2b

Arguments: ``size`` (layer12 ... layer48, 2b, 8b, 20b, or ``tiny``), ``pn`` (0.06M, 0.25M, 0.60M,
1M), ``data`` (arrayrecord, tfds, synthetic, shapes), ``text`` (t5, precomputed, random), ``runlocal``
(shrink everything but the model to a seconds-long CPU run). Any field can be overridden with
``--config.<key>=<value>``.
"""
import dataclasses

import ml_collections

from infinity_jax.transformer.config import SIZE_NAMES, InfinityConfig, size_config


def parse_arg(arg: str, **defaults) -> ml_collections.ConfigDict:
    """``'a=1,b=True,c=x'`` -> ConfigDict with typed values (types taken from the defaults)."""
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {', '.join(defaults)}")
        t = type(defaults[key])
        if t is bool:
            value = value.lower() in ("1", "true", "yes", "")
        out[key] = t(value)
    return out


#: The tiny transformer of the official-tiny reference fixture (depth 2, width 128).
TINY_MODEL = dict(depth=2, embed_dim=128, num_heads=2, block_chunks=2, drop_path_rate=0.0)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = parse_arg(arg, size="2b", pn="1M", runlocal=False, data="arrayrecord", text="t5")
    if args.size not in SIZE_NAMES + ("tiny",):
        raise ValueError(f"unknown size {args.size!r}; choose one of {', '.join(SIZE_NAMES + ('tiny',))}")
    c = ml_collections.ConfigDict()
    c.size = args.size
    c.pn = args.pn
    c.h_div_w = 1.0
    c.text_len = 77  # typical caption length, for FLOP accounting in tools/model_stats
    c.seed = 0

    # Resolution: the official templates at ``pn`` (``templates`` None = all 15), or a custom
    # schedule ((h, w), ...) in tokens (one template; image = 16 * last grid).
    c.schedule = None
    c.templates = None

    # Transformer: every InfinityConfig field, from the official size; override any of them.
    base = InfinityConfig(**TINY_MODEL) if args.size == "tiny" else size_config(args.size)
    c.model = ml_collections.ConfigDict(dataclasses.asdict(base))
    c.model.update(scan_blocks=True, remat=True, dtype="bfloat16", cond_drop_rate=0.1)

    # Frozen BSQ-VAE tokenizer (official: infinity_vae_d32_rdn_short.pth, base_ch 128).
    # (Its codebook size d is the model's codebook_dim; the 8B's tokenizer has stride 8 + 2x2 patchify.)
    c.tokenizer = ml_collections.ConfigDict(dict(
        checkpoint="", patch_size=16, base_ch=128, ch_mult=(1, 2, 4, 4, 4), num_res_blocks=2,
        dtype="float32", in_step=True))
    if base.apply_spatial_patchify:
        c.tokenizer.update(patch_size=8, ch_mult=(1, 2, 4, 4))
    if args.size == "tiny":
        c.tokenizer.base_ch = 32

    # Text: 't5' (frozen Flan-T5 encoder on the fly), 'precomputed' (features in the records or an
    # X.t5/ store), 'random' (smoke runs). Captions are padded to max_len tokens. Caption policy
    # (infinity_jax.data.captions; train.sh: --short_cap_prob 0.5 --enable_dynamic_length_prompt 1):
    # the short caption with short_caption_prob, random truncation of long captions to k sentences.
    # dtype: the online encoder's parameters, compute and features (official: float16).
    c.text = ml_collections.ConfigDict(dict(
        source=args.text, t5_path="", features="", max_len=512, short_caption_prob=0.5,
        dynamic_length_prompt=True, dtype="bfloat16"))

    # Data: ArrayRecord shards (infinity_jax.data.writer), a TFDS dataset, the synthetic source, or
    # a factory returning a random-access source: a built-in name of infinity_jax.data.sources.FACTORIES
    # ("shapes") or 'module:callable'.
    c.data = ml_collections.ConfigDict(dict(
        source=args.data, path="",
        tfds=dict(name="", data_dir="", split="train", image_key="image", caption_key="caption"),
        synthetic=dict(num_records=1024, sizes=((256, 256),), seed=0, corrupt=()),
        factory="", factory_kwargs={}, synthetic_unless_path=False,
        seed=0, shuffle=True, num_epochs=0, num_threads=8, prefetch=4, workers=0))

    if args.data == "shapes":  # the demo's procedural shapes with GenEval-like captions
        c.data.update(source="factory", factory="infinity_jax.data.shapes:ShapesSource",
                      factory_kwargs=dict(size=256, spec_format=None))
        c.templates = (1.0,)

    c.batch_size = 256  # global
    c.total_steps = 100_000

    # Official optimisation recipe (train.sh): AdamW (0.9, 0.97), lr = 6e-3 * batch / 256,
    # wd 0.005 on matrices, clip 5, constant lr, no EMA.
    c.optim = ml_collections.ConfigDict(dict(
        name="adamw", b1=0.9, b2=0.97, eps=1e-8, tblr=6e-3, lr=0.0, wd=0.005, clip=5.0,
        warmup_steps=0, warmup_init=0.005, schedule="constant", final_ratio=1.0, ema_decay=0.0,
        # steps with a non-finite loss / gradient norm are skipped; this many in a row stop the run
        max_nonfinite_steps=10))
    # always_training_scales (official default 100): train on the first n scales of every schedule.
    c.loss = ml_collections.ConfigDict(dict(reweight_by_scale=True, label_smoothing=0.0, always_training_scales=100))
    # Bitwise Self-Correction (train.sh: --noise_apply_strength 0.3 --noise_apply_layers 13; official
    # default --noise_apply_requant 1: the flipped bits feed the next scales; 0 leaves them clean).
    c.bsc = ml_collections.ConfigDict(dict(enabled=True, strength=0.3, apply_layers=13, requant=True))

    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=3, async_save=True))
    c.init = ml_collections.ConfigDict(dict(official="", checkpoint=""))
    c.log = ml_collections.ConfigDict(dict(every=1, tensorboard=True, progress=True, peak_tflops=0.0))
    c.compilation_cache = ""
    # Pickled .pth weights (tokenizer.checkpoint, init.official) are read as tensors only; True
    # unpickles any object, which can run code: only for trusted legacy files.
    c.trust_pickle = False
    c.debug = ml_collections.ConfigDict(dict(step_sleep=0.0, log_batches=False, memory_check=True))

    if args.runlocal:
        c.pn = "0.06M"
        c.schedule = ((1, 1), (2, 2), (4, 4))  # 64x64 images, 21 tokens
        c.model.dtype = "float32"
        c.model.text_maxlen = 64
        c.model.text_channels = 64 if args.size == "tiny" else 2048
        c.tokenizer.update(base_ch=32, num_res_blocks=1)
        c.text.update(source="random" if args.text == "t5" else args.text, max_len=16)
        if args.data == "arrayrecord":  # synthetic images, unless --config.data.path names shards
            c.data.update(source="synthetic", synthetic_unless_path=True)
        if args.data == "shapes":
            c.data.factory_kwargs.size = 64
        c.data.synthetic.update(num_records=64, sizes=((64, 64),))
        c.data.update(num_threads=2, prefetch=2)
        c.batch_size = 8
        c.total_steps = 10
        c.checkpoint.every = 5
        c.log.tensorboard = True
    return c
