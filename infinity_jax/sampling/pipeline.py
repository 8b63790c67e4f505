"""Text in, images out: the T5 encoder, the transformer sampler and the tokenizer's decoder together.

    pipe = Pipeline.from_checkpoint("ckpt/")
    out = pipe("a red circle to the left of a blue square", aspect="16:9", resolution="1M", seed=1)
    out.images[0].save("x.png")
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from PIL import Image

from infinity_jax import bundle, schedules
from infinity_jax.sampling.sampler import Sampler, SamplingConfig
from infinity_jax.text.encoder import TextEncoder
from infinity_jax.tokenizer.pixels import to_uint8
from infinity_jax.tokenizer.vae import jit_decode


class PromptError(ValueError):
    """An unusable prompt list (empty, not text)."""


@dataclasses.dataclass
class GenerationResult:
    """images: PIL images; previews: per image a list of PIL images after each scale (or None);
    bits: per scale (B,h,w,d); schedule: the scales used; seconds: wall time of the sampling call
    (compile included on first use), compile_seconds: time spent compiling in this call."""

    images: list
    previews: list | None
    bits: list
    schedule: tuple
    seconds: float
    compile_seconds: float


def strip(images: Sequence[Image.Image], pad: int = 2) -> Image.Image:
    """Lay images out left to right (the progressive previews of one sample)."""
    w = sum(im.width for im in images) + pad * (len(images) - 1)
    h = max(im.height for im in images)
    out = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + pad
    return out


def grid(images: Sequence[Image.Image], cols: int | None = None, pad: int = 2) -> Image.Image:
    """Tile images into a grid (row-major)."""
    n = len(images)
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    w, h = images[0].width, images[0].height
    out = Image.new("RGB", (cols * w + pad * (cols - 1), rows * h + pad * (rows - 1)), (255, 255, 255))
    for i, im in enumerate(images):
        out.paste(im, ((i % cols) * (w + pad), (i // cols) * (h + pad)))
    return out


class Pipeline:
    """Bundles a text encoder (optional), an :class:`Infinity` transformer and a BSQ-VAE."""

    def __init__(self, transformer, tokenizer, text_encoder=None, *, sampling_defaults: dict | None = None,
                 schedules_override: dict | None = None):
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._decode = jit_decode(tokenizer)
        self.sampler = Sampler(transformer, self)
        self.defaults = dict(sampling_defaults or {})
        # {"h/w": [[1,h,w], ...]} for checkpoints trained on custom schedules (e.g. the demo)
        self.custom_schedules = {float(k): tuple(tuple(s) for s in v) for k, v in (schedules_override or {}).items()}

    def decode(self, codes):
        return self._decode(codes)

    @classmethod
    def from_checkpoint(cls, directory, *, dtype: str | None = None, param_dtype: str | None = None,
                        mesh=None) -> "Pipeline":
        """``dtype``: compute dtype of the transformer blocks; ``param_dtype`` (e.g. ``bfloat16``, as
        the official inference): storage dtype of the blocks' and the text encoder's parameters,
        half the memory of float32 (the text encoder then also computes in it)."""
        transformer, tokenizer, text_folder, cfg = bundle.load(directory, dtype=dtype, param_dtype=param_dtype,
                                                              mesh=mesh)
        text = None
        if text_folder is not None:
            half = {} if param_dtype is None else {"dtype": jnp.dtype(param_dtype), "param_dtype": jnp.dtype(param_dtype)}
            text = TextEncoder.load(text_folder, **half)
        sampling = dict(cfg.get("sampling") or {})
        custom = sampling.pop("schedules", None)
        return cls(transformer, tokenizer, text, sampling_defaults=sampling, schedules_override=custom)

    # ------------------------------------------------------------------ schedules
    def schedule_for(self, aspect: str | float = 1.0, resolution: str | int | None = None) -> tuple:
        """The scale schedule for an aspect ratio and a resolution (pn name or square side)."""
        if self.custom_schedules:
            h_div_w = schedules.parse_aspect_ratio(aspect)
            keys = np.asarray(list(self.custom_schedules))
            best = float(keys[np.argmin(np.abs(keys - h_div_w))])
            if abs(best - h_div_w) / h_div_w > 0.1:
                raise schedules.ScheduleError(
                    f"this checkpoint supports aspect ratios h/w in {sorted(self.custom_schedules)}, not {h_div_w:.3g}")
            return self.custom_schedules[best]
        resolution = resolution or self.defaults.get("resolution", "1M")
        return schedules.select_schedule(aspect, resolution).scales

    # ------------------------------------------------------------------ text
    def encode_prompts(self, prompts: Sequence[str]):
        if self.text_encoder is None:
            raise PromptError("this checkpoint has no text encoder: pass precomputed features with text_features=")
        feats, mask, _ = self.text_encoder.encode(list(prompts))
        if feats.shape[-1] != self.transformer.cfg.text_channels:
            raise ValueError(f"text encoder width {feats.shape[-1]} != transformer text width "
                             f"{self.transformer.cfg.text_channels}")
        return feats, mask

    # ------------------------------------------------------------------ main
    def sampling_config(self, *, cfg=None, tau=None, top_k=None, top_p=None, greedy: bool = False,
                        cfg_insertion_layer: int | None = None) -> SamplingConfig:
        """The sampling settings: each argument left None takes the checkpoint's default (else the official
        one); raises ValueError for a ``cfg_insertion_layer`` this model cannot use."""
        d = self.defaults
        layer = cfg_insertion_layer if cfg_insertion_layer is not None else d.get("cfg_insertion_layer", 0)
        return SamplingConfig(
            cfg=cfg if cfg is not None else d.get("cfg", 3.0), tau=tau if tau is not None else d.get("tau", 0.5),
            top_k=top_k if top_k is not None else d.get("top_k", 900),
            top_p=top_p if top_p is not None else d.get("top_p", 0.97), greedy=greedy,
            cfg_insertion_layer=layer).validate(self.transformer.cfg.depth)

    def __call__(self, prompts: str | Sequence[str] | None = None, *, text_features=None, text_mask=None,
                 negative_prompt: str | None = None, aspect: str | float = 1.0, resolution: str | int | None = None,
                 cfg: float | Sequence[float] | None = None, tau: float | Sequence[float] | None = None,
                 top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
                 cfg_insertion_layer: int | None = None, seed: int | Sequence[int] = 0, save_scales: bool = False,
                 max_batch: int | None = None, progress: Callable[[int, int], None] | None = None) -> GenerationResult:
        """Generate one image per prompt (``seed`` is the first image's seed, or one per image).

        ``max_batch``: sample at most this many images at once (the KV cache grows with it: at 1M
        with guidance, Infinity-2B's bfloat16 cache is 3.2 GiB per image); an image does not depend
        on the batch it is sampled in. ``progress(k, K)`` is called after each scale of each batch."""
        if max_batch is not None and int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        if text_features is None:
            if isinstance(prompts, str):
                prompts = [prompts]
            if not prompts:
                raise PromptError("no prompts given")
            if not all(isinstance(p, str) for p in prompts):
                raise PromptError("prompts must be strings")
            text_features, text_mask = self.encode_prompts(prompts)
        text_features = jnp.asarray(text_features, jnp.float32)
        if text_mask is None:
            text_mask = jnp.ones(text_features.shape[:2], bool)
        B = text_features.shape[0]
        neg = neg_mask = None
        if negative_prompt:
            nf, nm = self.encode_prompts([negative_prompt] * B)
            neg, neg_mask = nf, nm
        settings = self.sampling_config(cfg=cfg, tau=tau, top_k=top_k, top_p=top_p, greedy=greedy,
                                        cfg_insertion_layer=cfg_insertion_layer)
        seeds = [int(seed) + i for i in range(B)] if np.isscalar(seed) else [int(s) for s in seed]
        if len(seeds) != B:
            raise ValueError(f"{len(seeds)} seeds for {B} prompts")
        sched = self.schedule_for(aspect, resolution)
        step = int(max_batch) if max_batch else B
        pil, previews, bits = [], [] if save_scales else None, []
        seconds = compile_s = 0.0
        for lo in range(0, B, step):
            hi = min(B, lo + step)
            n_compiled = len(self.sampler._compiled)
            t0 = time.perf_counter()
            out = self.sampler.generate(text_features[lo:hi], text_mask[lo:hi], sched, settings=settings,
                                        seeds=seeds[lo:hi], neg_text=None if neg is None else neg[lo:hi],
                                        neg_mask=None if neg is None else neg_mask[lo:hi], previews=save_scales,
                                        progress=progress)
            images = to_uint8(out.images)
            took = time.perf_counter() - t0
            seconds += took
            compile_s += took if len(self.sampler._compiled) > n_compiled else 0.0
            new = [Image.fromarray(im) for im in images]
            pil += new
            bits.append(out.bits)
            if save_scales:
                prev = [to_uint8(p) for p in out.previews]
                previews += [[Image.fromarray(p[i]).resize(new[i].size, Image.NEAREST) for p in prev]
                             for i in range(hi - lo)]
        bits = [jnp.concatenate(per_scale, 0) for per_scale in zip(*bits)]
        return GenerationResult(pil, previews, bits, tuple(sched), seconds, compile_s)
