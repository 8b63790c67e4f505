r"""The embedded default: text-to-image on a laptop CPU, trained from nothing (``python -m infinity_jax.demo``).

  python -m infinity_jax.demo --workdir /tmp/demo            # the default run (~30 min on 2 cores)
  python -m infinity_jax.demo --workdir /tmp/demo_q --quick  # CI: a few minutes, same files
  python -m infinity_jax.demo --workdir /tmp/demo --config configs/demo.py:quick=True \
      --config.infinity.total_steps=2000                    # any field can be overridden

Sections:
  tokenizer  a ``configs/tokenizer.py`` config (shapes preset): BSQ-VAE, 32x32 images, patch 2
             (16x16 latent), d=16, trained with the BSQ losses by ``infinity_jax.training.tokenizer_trainer``
             on the tokenizer grids of the transformer schedule (``schedules.tokenizer_schedule``:
             2x2 .. 16x16);
  text       SentencePiece on the training captions and a tiny T5 encoder (with learned absolute
             positions) trained on them by masked-token denoising, then frozen (no pretrained weights);
  infinity   a ``configs/infinity.py`` config for ``infinity_jax.training.trainer.Trainer``: a tiny
             Infinity with Bitwise Self-Correction on the shapes captions; with spatial patchify (as
             the official 8B) each transformer token packs 2x2 tokenizer tokens (64 bits), so the
             ``schedule`` is 1x1 .. 8x8 (85 tokens instead of 341);
  generate   sampling settings for the held-out prompts, written into the bundle's defaults;
  eval       seeds per held-out prompt and the number of progressive previews.
The run-time paths (tokenizer checkpoint, T5 folder) are filled in by the demo.
"""
import importlib.util
import pathlib

import ml_collections

from infinity_jax.schedules import tokenizer_schedule

_HERE = pathlib.Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_demo_{name}", _HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    tok_cfg, inf_cfg = _load("tokenizer"), _load("infinity")
    args = tok_cfg.parse_arg(arg, quick=False)
    c = ml_collections.ConfigDict()
    c.quick = args.quick
    c.seed = 0
    # 32x32 images: the shapes evaluator scores true 32px renders of the demo stream 1.0 (the free
    # layout: 0.97; 64px: 1.0), and on 2 CPU
    # cores a 64x64 tokenizer costs 4x more per image than the whole budget allows. The 16x16 latent
    # (patch 2) keeps small stars and crosses recognisable; 8x8 does not (see configs/tokenizer.py).
    c.image_size = 32
    # Transformer token grids (85 tokens). With spatial patchify a transformer token is 2x2 tokenizer
    # tokens, so the tokenizer's grids are twice these (patch 2: 16x16 latent -> 32x32 images). A step
    # costs ~0.3 s instead of ~0.8 s on the 341 tokens of the unpacked 1..16 schedule, and in equal time
    # the finest scale learns far better: with the true coarse scales replayed, the model's own finest
    # scale scores 0.61 (packed) vs 0.17 (unpacked) on the held-out prompts (eval.prefix_replay).
    c.schedule = ((1, 1), (2, 2), (4, 4), (8, 8))
    c.apply_spatial_patchify = True

    # The shapes stream, as the demo draws it (infinity_jax.data.shapes layout styles). Infinity samples
    # every bit of a scale independently, so whatever a caption leaves open (where the objects go,
    # which of two sides the first one takes, the colour of "a circle", the background) is a set of
    # modes the tiny model blends: two objects come out as two copies of one. Infinity trains on the
    # "canonical" layout (fixed slots by object count, reading order, relations honoured, colour-free
    # objects blue, one background): the picture is a function of the caption, held-out overall 0.72
    # vs 0.21 on "lattice" in less time. The tokenizer trains on the more varied "lattice" stream
    # (centres anywhere on the 4-px lattice). The held-out prompts and the evaluator are the same.
    c.data = ml_collections.ConfigDict(dict(style="canonical", backgrounds=("light gray",),
                                            tokenizer_style="lattice"))

    # ------------------------------------------------------------------ tokenizer (BSQ-VAE)
    t = tok_cfg.get_config("preset=shapes")
    t.schedule = tuple((h, w) for _, h, w in tokenizer_schedule(c.schedule, c.apply_spatial_patchify))
    t.data.factory_kwargs.update(style=c.data.tokenizer_style, backgrounds=c.data.backgrounds)
    t.eval.factory_kwargs.update(style=c.data.tokenizer_style, backgrounds=c.data.backgrounds)
    c.tokenizer = t

    # ------------------------------------------------------------------ text encoder
    c.text = ml_collections.ConfigDict(dict(
        num_captions=20_000,  # training captions for SentencePiece (held-out prompts never appear)
        vocab_size=64,  # soft limit: the caption vocabulary is 29 words
        word_lines=50,  # each training word is also added as this many one-word lines (see demo.py)
        t5=dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                absolute_positions=32),
        # absolute_positions: learned position embeddings (not in T5). Two layers trained from nothing
        # give bag-of-words features: "a red circle and a blue square" ~ "a blue circle and a red
        # square", so the model cannot tell which colour goes where (binding 0.29 without, 0.90 with).
        max_len=16,  # tokens per caption in training, EOS included (the longest caption has ~14)
        # masked-token denoising of the encoder on the training captions (infinity_jax.training.text_pretrain)
        # keep_weight: the unmasked tokens are reconstructed too, else their features need not keep
        # their own word (per-token cosine of "red" vs "blue" in context: 0.98 without, 0.14 with;
        # held-out overall 0.67 -> 0.90, binding 0.90 -> 0.98, position 0.21 -> 0.44).
        pretrain=dict(steps=400, batch_size=128, mask_rate=0.3, keep_weight=1.0, lr=3e-3),
        seed=0))

    # ------------------------------------------------------------------ Infinity
    i = inf_cfg.get_config("size=tiny,text=t5,data=synthetic")
    i.seed = 0
    i.schedule = c.schedule
    i.templates = None
    # text_maxlen 32: prompts are padded to a multiple of 32 tokens at inference (TextEncoder buckets)
    i.model.update(depth=4, embed_dim=128, num_heads=2, block_chunks=1, codebook_dim=16, text_channels=64,
                   text_maxlen=32, num_levels=len(c.schedule), scan_blocks=False, remat=False, dtype="float32",
                   cond_drop_rate=0.1, drop_path_rate=0.0, apply_spatial_patchify=c.apply_spatial_patchify)
    i.tokenizer.update(checkpoint="", codebook_dim=16, patch_size=t.model.patch_size, base_ch=t.model.base_ch,
                       ch_mult=t.model.ch_mult, num_res_blocks=t.model.num_res_blocks, in_step=True)
    i.text.update(source="t5", t5_path="", max_len=16, short_caption_prob=0.0, dtype="float32")
    i.data.update(source="factory", factory="shapes",
                  factory_kwargs=dict(size=c.image_size, seed=0, length=200_000, style=c.data.style,
                                      backgrounds=c.data.backgrounds), num_threads=2, prefetch=2, workers=0)
    i.batch_size = 16
    i.total_steps = 4500
    i.optim.update(lr=1.5e-3, b2=0.98, wd=0.01, clip=2.0, warmup_steps=50, schedule="cosine", final_ratio=0.1,
                   ema_decay=0.0)
    i.loss.update(reweight_by_scale=True, label_smoothing=0.0)
    i.bsc.update(enabled=True, strength=0.2, apply_layers=len(c.schedule))
    i.mesh.update(data=1, fsdp=-1, tensor=1)
    i.checkpoint.update(every=100, keep=2, async_save=True)
    i.log.update(every=100, tensorboard=True, progress=True)
    c.infinity = i

    # ------------------------------------------------------------------ sampling + evaluation
    c.generate = ml_collections.ConfigDict(dict(cfg=3.0, tau=0.5, top_k=0, top_p=0.0, batch=96))
    # prefix_replay: also score generation with the first k scales replayed from the true renders
    # (k = 0 .. K; infinity_jax.eval.prefix_replay), which shows the scales that lose the prompt.
    c.eval = ml_collections.ConfigDict(dict(seeds=(0, 1), previews=6, tokenizer_images_seeds=1, prefix_replay=True))

    if args.quick:
        t.total_steps = 30
        t.batch_size = 8
        t.optim.warmup_steps = 5
        t.checkpoint.every = 15
        t.eval.update(every=30, num_images=32)
        t.log.every = 10
        c.text.num_captions = 3000
        c.text.pretrain.steps = 40
        i.model.update(depth=2, embed_dim=64, num_heads=1)
        i.batch_size = 16
        i.total_steps = 30
        i.optim.warmup_steps = 5
        i.checkpoint.every = 15
        i.log.every = 10
        c.eval.update(seeds=(0,), previews=3)
    return c
