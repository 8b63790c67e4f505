"""BSQ-VAE tokenizer (Flax NNX): the official ``flux_vqgan.AutoEncoder`` with the multi-scale BSQ.

Layout: everything is channels-last. Images are ``(B, H, W, 3)`` floats in [-1, 1]; latents,
codes and transformer inputs are ``(B, h, w, d)``; bits are ``(B, h, w, d)`` int32 in {0, 1}.
``h = H / stride`` with ``stride = config.patch_size`` (16, or 8 for the 8B tokenizer).

Architecture (as the official ``Encoder``/``Decoder``, 2-D convs, no attention):

* ``ResnetBlock(cin, cout)``: GN -> swish -> conv3x3 -> GN -> swish -> conv3x3, plus a 1x1
  ``nin_shortcut`` on the skip path when ``cin != cout``. GroupNorm has 32 groups (24 when the
  width is not a multiple of 32), eps 1e-6.
* ``Downsample``: zero-pad right/bottom by one, conv3x3 stride 2 (no other padding).
* ``Upsample``: nearest x2 then conv3x3.  By default the pair is evaluated as four 2x2 convs on the
  un-upsampled grid (one per output phase), which is the same linear map with 2.25x fewer FLOPs.
* Encoder: conv_in 3->C; per level i: ``num_res_blocks`` blocks to ``C*ch_mult[i]`` and a
  Downsample for ``i < log2(patch_size)``; mid: two blocks; GN -> swish -> conv3x3 -> d.
* Decoder: conv3x3 d->C*ch_mult[-1]; mid: two blocks; levels i = L-1..0 with
  ``num_res_blocks + 1`` blocks and an Upsample for ``1 <= i <= log2(patch_size)``;
  GN -> swish -> conv3x3 -> 3; :meth:`BSQVAE.decode` clamps to [-1, 1].

``apply_spatial_patchify`` (the 8B tokenizer): the transformer token packs 2x2 VAE tokens
(pixel-unshuffle: channel ``c*4 + 2*i + j`` holds channel c of the VAE token at row offset i,
column offset j), so the transformer sees ``4d`` channels on a grid half the latent grid.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infinity_jax import schedules as _schedules
from infinity_jax.sharding import param
from infinity_jax.tokenizer import quantizer as _q
from infinity_jax.tokenizer.packing import patchify, unpatchify
from infinity_jax.tokenizer.resample import area_resize, bilinear_resize

#: Codebook sizes (bits per VAE token) that the official loaders accept (load.py and run_infinity.py).
ALLOWED_CODEBOOK_DIMS = (8, 14, 16, 18, 20, 24, 32, 64, 128)

_HIGHEST = jax.lax.Precision.HIGHEST
_CONV_NAMES = ("conv_spatial", "conv_spatial", "conv_in", "conv_out")
_GN_EPS = 1e-6


# ----------------------------------------------------------------------------------------------
# config


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Hyper-parameters of the BSQ-VAE.

    Attributes:
      codebook_dim: d, bits per VAE token (= latent channels). One of ``ALLOWED_CODEBOOK_DIMS``.
      base_ch: width of the first level (official 128).
      ch_mult: width multipliers per level; ``(1,2,4,4,4)`` for stride 16, ``(1,2,4,4)`` for 8.
      num_res_blocks: ResnetBlocks per encoder level (the decoder has one more).
      patch_size: spatial stride of the VAE (16 or 8); ``log2(patch_size) < len(ch_mult)``.
      apply_spatial_patchify: the transformer packs 2x2 VAE tokens into one (8B tokenizer).
      in_channels: image channels.
      dtype: activation dtype of the CNN (``"float32"`` or ``"bfloat16"``); the quantizer is fp32.
      fast_upsample: evaluate nearest-x2 + conv3x3 as four 2x2 convs (same map, fewer FLOPs).
    """

    codebook_dim: int = 32
    base_ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    num_res_blocks: int = 2
    patch_size: int = 16
    apply_spatial_patchify: bool = False
    in_channels: int = 3
    dtype: str = "float32"
    fast_upsample: bool = True

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        if self.codebook_dim not in ALLOWED_CODEBOOK_DIMS:
            raise ValueError(f"codebook_dim={self.codebook_dim} is not one of the official sizes "
                             f"{ALLOWED_CODEBOOK_DIMS}")
        p = self.patch_size
        if p < 1 or p & (p - 1):
            raise ValueError(f"patch_size must be a power of two, got {p}")
        if int(math.log2(p)) >= len(self.ch_mult):
            raise ValueError(f"patch_size {p} needs more than {len(self.ch_mult)} levels: "
                             f"log2(patch_size) must be < len(ch_mult) (official: 16 with "
                             f"(1,2,4,4,4), 8 with (1,2,4,4))")
        if self.num_res_blocks < 1 or self.base_ch < 1:
            raise ValueError("num_res_blocks and base_ch must be positive")
        for m in self.ch_mult:
            _num_groups(self.base_ch * m)  # raises for widths GroupNorm cannot split
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

    # -- derived ------------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        """Pixels per VAE token along each axis."""
        return self.patch_size

    @property
    def token_stride(self) -> int:
        """Pixels per transformer token along each axis (x2 with spatial patchify)."""
        return self.patch_size * (_schedules.PATCHIFY_FACTOR if self.apply_spatial_patchify else 1)

    @property
    def token_dim(self) -> int:
        """Bits per transformer token: d, or 4d with spatial patchify."""
        return self.codebook_dim * (_schedules.PATCHIFY_FACTOR ** 2 if self.apply_spatial_patchify else 1)

    @property
    def num_down(self) -> int:
        return int(math.log2(self.patch_size))

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def official(cls, vae_type: int = 32, apply_spatial_patchify: bool = False, **kw) -> "VAEConfig":
        """The configuration ``build_vae_gpt`` makes for ``--vae_type`` / ``--apply_spatial_patchify``."""
        if apply_spatial_patchify:
            kw.setdefault("patch_size", 8)
            kw.setdefault("ch_mult", (1, 2, 4, 4))
        return cls(codebook_dim=int(vae_type), apply_spatial_patchify=bool(apply_spatial_patchify), **kw)

    @classmethod
    def from_official(cls, cfg: Mapping[str, Any], **overrides) -> "VAEConfig":
        """Read an official-style dict (the fixture manifest's ``config.vae``, ``vae_model`` kwargs).

        Accepts the manifest itself or its ``config`` too. Keys: ``codebook_dim`` (or ``vae_type``),
        ``base_ch``, ``num_res_blocks``, ``patch_size``, ``ch_mult`` (or ``encoder_ch_mult`` /
        ``decoder_ch_mult``); ``codebook_size``, ``z_interplote_up`` and ``z_interplote_down`` are
        checked against what this port implements. ``apply_spatial_patchify`` is read by
        :func:`~infinity_jax.schedules.official_patchify` wherever the configuration states it (the
        official code passes it to the transformer, so a manifest has it in its ``infinity`` section).
        """
        cfg = dict(cfg)
        patchify = _schedules.official_patchify(cfg)
        for key in ("config", "vae"):
            if isinstance(cfg.get(key), Mapping):
                cfg = dict(cfg[key])
        d = cfg.get("codebook_dim", cfg.get("vae_type"))
        if d is None:
            raise ValueError(f"official VAE config has no codebook_dim / vae_type: keys {sorted(cfg)}")
        d = int(d)
        if "codebook_size" in cfg and int(cfg["codebook_size"]) != 2 ** d:
            raise ValueError(f"codebook_size {cfg['codebook_size']} != 2**codebook_dim ({2 ** d})")
        up = str(cfg.get("z_interplote_up", "trilinear"))
        down = str(cfg.get("z_interplote_down", "area"))
        if up not in ("trilinear", "bilinear") or down != "area":
            raise ValueError(f"only z_interplote_up='trilinear' and z_interplote_down='area' are "
                             f"implemented, got up={up!r}, down={down!r}")
        enc = cfg.get("ch_mult", cfg.get("encoder_ch_mult"))
        dec = cfg.get("decoder_ch_mult", enc)
        if enc is not None and dec is not None and tuple(enc) != tuple(dec):
            raise ValueError(f"encoder_ch_mult {enc} != decoder_ch_mult {dec}: not supported")
        kw = dict(codebook_dim=d, apply_spatial_patchify=patchify)
        if "base_ch" in cfg:
            kw["base_ch"] = int(cfg["base_ch"])
        if "num_res_blocks" in cfg:
            kw["num_res_blocks"] = int(cfg["num_res_blocks"])
        if "patch_size" in cfg:
            kw["patch_size"] = int(cfg["patch_size"])
        elif patchify:
            kw["patch_size"] = 8
        if enc is not None:
            kw["ch_mult"] = tuple(enc)
        elif kw.get("patch_size", 16) == 8:
            kw["ch_mult"] = (1, 2, 4, 4)
        kw.update(overrides)
        return cls(**kw)


def _num_groups(channels: int) -> int:
    """GroupNorm groups as the official ``Normalize``: 32, else 24, else unsupported."""
    if channels % 32 == 0:
        return 32
    if channels % 24 == 0:
        return 24
    raise ValueError(f"GroupNorm width {channels} is divisible by neither 32 nor 24 (official Normalize)")


# ----------------------------------------------------------------------------------------------
# layers


def _torch_uniform(fan_in: int) -> Callable:
    """PyTorch's default Conv2d init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _conv(cin: int, cout: int, k: int, rngs: nnx.Rngs, dtype, strides: int = 1, padding=None) -> nnx.Conv:
    fan_in = cin * k * k
    if padding is None:
        padding = ((k // 2, k // 2),) * 2
    return nnx.Conv(
        cin, cout, (k, k), strides=strides, padding=padding, precision=_HIGHEST, dtype=dtype,
        kernel_init=param(_torch_uniform(fan_in), _CONV_NAMES),
        bias_init=param(_torch_uniform(fan_in), ("conv_out",)), rngs=rngs)


class GroupNorm(nnx.Module):
    """GroupNorm over channels-last ``(B, H, W, C)``, statistics in fp32 (eps 1e-6, affine)."""

    def __init__(self, num_channels: int, *, dtype=jnp.float32, eps: float = _GN_EPS):
        self.num_channels = num_channels
        self.num_groups = _num_groups(num_channels)
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(param(nnx.initializers.ones_init(), ("norm",))(None, (num_channels,)))
        self.bias = nnx.Param(param(nnx.initializers.zeros_init(), ("norm",))(None, (num_channels,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        # Two passes (mean, then centred variance) like PyTorch; the reductions run over the
        # spatial axes first (per channel, contiguous in NHWC) and are then summed per group,
        # which XLA:CPU executes several times faster than one reduction over (HW, C/G).
        B, H, W, C = x.shape
        G = self.num_groups
        cg = C // G
        n = H * W * cg
        xf = x.astype(jnp.float32)
        mean = jnp.sum(xf, axis=(1, 2)).reshape(B, G, cg).sum(-1) / n  # (B, G)
        mean_c = jnp.repeat(mean, cg, axis=1)[:, None, None, :]  # (B, 1, 1, C)
        var = jnp.sum(jnp.square(xf - mean_c), axis=(1, 2)).reshape(B, G, cg).sum(-1) / n
        inv_c = jnp.repeat(jax.lax.rsqrt(var + self.eps), cg, axis=1)[:, None, None, :]
        scale = inv_c * self.scale.get_value()
        shift = self.bias.get_value() - mean_c * scale
        return (xf * scale + shift).astype(self.dtype)


def swish(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(x)


class ResnetBlock(nnx.Module):
    """GN-swish-conv3x3 twice, with a 1x1 ``nin_shortcut`` when the width changes."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.norm1 = GroupNorm(cin, dtype=dtype)
        self.conv1 = _conv(cin, cout, 3, rngs, dtype)
        self.norm2 = GroupNorm(cout, dtype=dtype)
        self.conv2 = _conv(cout, cout, 3, rngs, dtype)
        self.nin_shortcut = _conv(cin, cout, 1, rngs, dtype) if cin != cout else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = _pointwise_conv(x, self.nin_shortcut)
        return x + h


def _pointwise_conv(x: jax.Array, conv: nnx.Conv) -> jax.Array:
    """A 1x1 ``nnx.Conv`` as a matmul over channels (XLA:CPU runs this ~4x faster than a conv)."""
    dtype = conv.dtype or x.dtype
    k = conv.kernel.get_value()[0, 0].astype(dtype)  # (C, O)
    y = jnp.einsum("bhwc,co->bhwo", x.astype(dtype), k, precision=_HIGHEST)
    return y + conv.bias.get_value().astype(dtype)


class Downsample(nnx.Module):
    """Pad right/bottom by one, conv3x3 stride 2: ``(B, H, W, C) -> (B, H/2, W/2, C)``."""

    def __init__(self, ch: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.conv = _conv(ch, ch, 3, rngs, dtype, strides=2, padding=((0, 1), (0, 1)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest x2 then conv3x3: ``(B, H, W, C) -> (B, 2H, 2W, C)``."""

    def __init__(self, ch: int, *, rngs: nnx.Rngs, dtype=jnp.float32, fast: bool = True):
        self.conv = _conv(ch, ch, 3, rngs, dtype)
        self.fast = fast

    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.fast:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            return self.conv(x)
        return _subpixel_upsample_conv(x, self.conv)


def _subpixel_upsample_conv(x: jax.Array, conv: nnx.Conv) -> jax.Array:
    """conv3x3(nearest_x2(x)) as four 2x2 convs on x, one per output phase (p, q).

    Output row 2a+p of the upsampled conv reads rows (a-1, a, a) for p=0 and (a, a, a+1) for
    p=1, so the 3 row taps fold into 2: p=0 -> (w0, w1+w2) at offsets (-1, 0);
    p=1 -> (w0+w1, w2) at offsets (0, +1). Same for columns.
    """
    k = conv.kernel.get_value()  # (3, 3, C, O)
    b = conv.bias.get_value()
    dtype = conv.dtype or x.dtype
    x = x.astype(dtype)

    def fold(w, p, axis):
        w0, w1, w2 = (jnp.take(w, i, axis=axis) for i in range(3))
        pair = (w0, w1 + w2) if p == 0 else (w0 + w1, w2)
        return jnp.stack(pair, axis=axis)

    outs = []
    for p in (0, 1):
        row = []
        kp = fold(k, p, 0)
        for q in (0, 1):
            kpq = fold(kp, q, 1).astype(dtype)  # (2, 2, C, O)
            pad = ((1, 0) if p == 0 else (0, 1), (1, 0) if q == 0 else (0, 1))
            y = jax.lax.conv_general_dilated(
                x, kpq, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HIGHEST)
            row.append(y)
        outs.append(jnp.stack(row, axis=3))  # (B, H, W, 2[q], O)
    y = jnp.stack(outs, axis=2)  # (B, H, 2[p], W, 2[q], O)
    B, H, _, W, _, O = y.shape
    return y.reshape(B, 2 * H, 2 * W, O) + b.astype(dtype)


class _Level(nnx.Module):
    """One resolution level: ``block`` (list of ResnetBlocks) and an optional resampler."""

    def __init__(self, blocks: list, resample_name: str | None, resample: nnx.Module | None):
        self.block = nnx.List(blocks)
        if resample_name == "downsample":
            self.downsample = resample
        elif resample_name == "upsample":
            self.upsample = resample


class _Mid(nnx.Module):
    def __init__(self, ch: int, *, rngs: nnx.Rngs, dtype):
        self.block_1 = ResnetBlock(ch, ch, rngs=rngs, dtype=dtype)
        self.block_2 = ResnetBlock(ch, ch, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        return self.block_2(self.block_1(x))


class Encoder(nnx.Module):
    """``(B, H, W, 3) -> (B, H/stride, W/stride, d)``."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        ch = cfg.base_ch
        self.conv_in = _conv(cfg.in_channels, ch, 3, rngs, dtype)
        in_mult = (1,) + cfg.ch_mult
        levels = []
        block_in = ch
        for i, m in enumerate(cfg.ch_mult):
            block_in = ch * in_mult[i]
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * m, rngs=rngs, dtype=dtype))
                block_in = ch * m
            down = Downsample(block_in, rngs=rngs, dtype=dtype) if i < cfg.num_down else None
            levels.append(_Level(blocks, "downsample" if down is not None else None, down))
        self.down = nnx.List(levels)
        self.mid = _Mid(block_in, rngs=rngs, dtype=dtype)
        self.norm_out = GroupNorm(block_in, dtype=dtype)
        self.conv_out = _conv(block_in, cfg.codebook_dim, 3, rngs, dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nnx.Module):
    """``(B, h, w, d) -> (B, h*stride, w*stride, 3)`` (not clamped)."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        ch = cfg.base_ch
        L = len(cfg.ch_mult)
        block_in = ch * cfg.ch_mult[-1]
        self.conv_in = _conv(cfg.codebook_dim, block_in, 3, rngs, dtype)
        self.mid = _Mid(block_in, rngs=rngs, dtype=dtype)
        levels: list = [None] * L
        for i in reversed(range(L)):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch * cfg.ch_mult[i], rngs=rngs, dtype=dtype))
                block_in = ch * cfg.ch_mult[i]
            up = (Upsample(block_in, rngs=rngs, dtype=dtype, fast=cfg.fast_upsample)
                  if 1 <= i <= cfg.num_down else None)
            levels[i] = _Level(blocks, "upsample" if up is not None else None, up)
        self.up = nnx.List(levels)
        self.norm_out = GroupNorm(block_in, dtype=dtype)
        self.conv_out = _conv(block_in, cfg.in_channels, 3, rngs, dtype)

    def __call__(self, z: jax.Array) -> jax.Array:
        h = self.mid(self.conv_in(z))
        for level in reversed(list(self.up)):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


# ----------------------------------------------------------------------------------------------
# the model


Schedule = Sequence[Sequence[int]]


class BSQVAE(nnx.Module):
    """The BSQ-VAE tokenizer. See the module docstring for layouts.

    Args:
      config: a :class:`VAEConfig` (default: the official d=32, stride-16 tokenizer).
      rngs: initialiser RNGs (weights are normally loaded with :func:`load`).
    """

    def __init__(self, config: VAEConfig | None = None, *, rngs: nnx.Rngs | None = None):
        config = config or VAEConfig()
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)

    # -- checks -------------------------------------------------------------------------------
    def _check_images(self, images: jax.Array) -> jax.Array:
        cfg = self.config
        if images.ndim != 4:
            raise ValueError(f"images must be (B, H, W, {cfg.in_channels}) NHWC, got shape {images.shape}")
        if images.shape[-1] != cfg.in_channels:
            hint = (" - this looks like NCHW; transpose with images.transpose(0, 2, 3, 1)"
                    if images.shape[1] == cfg.in_channels else "")
            raise ValueError(f"images must be (B, H, W, {cfg.in_channels}) NHWC, got shape "
                             f"{images.shape}{hint}")
        H, W = images.shape[1:3]
        if H % cfg.stride or W % cfg.stride:
            raise ValueError(f"image size {H}x{W} is not divisible by the VAE stride {cfg.stride}")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"images must be floats in [-1, 1], got dtype {images.dtype}")
        return images

    def _check_latent(self, z: jax.Array, what: str) -> jax.Array:
        d = self.config.codebook_dim
        if z.ndim != 4:
            raise ValueError(f"{what} must be (B, h, w, {d}), got shape {z.shape}")
        if self.config.apply_spatial_patchify and z.shape[-1] == self.config.token_dim:
            return unpatchify(z)
        if z.shape[-1] != d:
            hint = (" - this looks channels-first; transpose with .transpose(0, 2, 3, 1)"
                    if z.shape[1] == d else "")
            raise ValueError(f"{what} must be (B, h, w, {d}) channels-last, got shape {z.shape}{hint}")
        return z

    def _vae_bits(self, bits_list: Sequence[jax.Array]) -> list:
        return [self._check_latent(jnp.asarray(b), "bits") for b in bits_list]

    def resolve_schedule(self, schedule, latent_grid: tuple[int, int] | None = None):
        """Return the VAE-grid schedule ``((1, h_k, w_k), ...)``.

        ``schedule`` is a list of ``(t, h, w)`` or ``(h, w)`` grids or a
        :class:`~infinity_jax.schedules.ScaleSchedule`. With spatial patchify a transformer-grid
        schedule (last grid half the latent grid) is doubled. ``None`` picks the official
        dynamic schedule whose last grid is ``latent_grid``.
        """
        if schedule is None:
            if latent_grid is None:
                raise ValueError("a schedule is required")
            return default_schedule(latent_grid, self.config)
        scales = _schedules.normalize_schedule(getattr(schedule, "scales", schedule))
        if latent_grid is not None:
            last = tuple(scales[-1][1:])
            if last != tuple(latent_grid):
                doubled = _schedules.tokenizer_schedule(scales, self.config.apply_spatial_patchify)
                if self.config.apply_spatial_patchify and tuple(doubled[-1][1:]) == tuple(latent_grid):
                    return doubled
                raise ValueError(f"the schedule's last grid {last} does not match the latent grid "
                                 f"{tuple(latent_grid)}")
        return scales

    # -- encoder side -------------------------------------------------------------------------
    def encode_features(self, images: jax.Array) -> jax.Array:
        """Raw latent ``(B, H/s, W/s, d)`` float32 of NHWC images in [-1, 1]."""
        images = self._check_images(images)
        x = images.astype(jnp.dtype(self.config.dtype))
        return self.encoder(x).astype(jnp.float32)

    def quantize(self, features: jax.Array, schedule=None) -> _q.MultiScaleOutput:
        """Multi-scale residual BSQ of a latent ``(B, h, w, d)``; see :func:`quantizer.multiscale_quantize`."""
        features = self._check_latent(features, "features")
        sched = self.resolve_schedule(schedule, features.shape[1:3])
        return _q.multiscale_quantize(features, sched)

    def encode(self, images: jax.Array, schedule=None) -> tuple[jax.Array, list]:
        """Images ``(B, H, W, 3)`` -> ``(quantized (B, h, w, d), bits_list)``.

        ``quantized`` is the decoder input (sum of all upsampled codes, straight-through gradient
        to the latent); ``bits_list[k]`` is ``(B, h_k, w_k, d)`` int32 on the VAE grid (use
        :func:`patchify` for the transformer's packed labels with spatial patchify).
        """
        out = self.quantize(self.encode_features(images), schedule)
        return out.quantized, list(out.bits)

    def bits_to_codes(self, bits_list: Sequence[jax.Array], grid: tuple[int, int] | None = None) -> jax.Array:
        """Sum over scales of the (trilinear) upsampled codes of each scale: ``(B, h, w, d)``."""
        return _q.codes_from_bits(self._vae_bits(bits_list), grid)

    def var_inputs(self, bits_list: Sequence[jax.Array], schedule=None, *, mode: str = "bilinear",
                   packed: bool | None = None) -> list:
        """Transformer inputs for scales 1..K-1: ``K-1`` arrays ``(B, h_{k+1}, w_{k+1}, d)``.

        Input k is the running sum of the upsampled codes of scales <= k, resized to grid k+1 with
        ``mode='bilinear'`` (the transformer pipeline, ``BitwiseSelfCorrection.flip_requant``) or
        ``'area'`` (the VAE-internal ``var_inputs`` of ``MultiScaleBSQ``, unused upstream).
        With spatial patchify the result is packed to ``(B, h/2, w/2, 4d)`` unless ``packed=False``.
        """
        bits = self._vae_bits(bits_list)
        grid = tuple(bits[-1].shape[1:3])
        sched = self.resolve_schedule(schedule if schedule is not None else
                                      [b.shape[1:3] for b in bits], grid)
        if len(sched) != len(bits):
            raise ValueError(f"{len(bits)} bit maps for a {len(sched)}-scale schedule")
        for k, (b, s) in enumerate(zip(bits, sched)):
            if tuple(b.shape[1:3]) != tuple(s[1:]):
                raise ValueError(f"bits of scale {k} have grid {tuple(b.shape[1:3])}, schedule says {tuple(s[1:])}")
        if mode == "bilinear":
            out = _q.var_inputs_from_bits(bits, sched)
        elif mode == "area":
            summed, out = 0.0, []
            for k, b in enumerate(bits[:-1]):
                summed = summed + bilinear_resize(_q.bits_to_codes(b), grid)
                out.append(area_resize(summed, tuple(sched[k + 1][1:])))
        else:
            raise ValueError(f"mode must be 'bilinear' or 'area', got {mode!r}")
        if packed is None:
            packed = self.config.apply_spatial_patchify
        return [patchify(v) for v in out] if packed else out

    # -- decoder side -------------------------------------------------------------------------
    def decode(self, codes: jax.Array) -> jax.Array:
        """Codes ``(B, h, w, d)`` -> images ``(B, h*s, w*s, 3)`` float32 clamped to [-1, 1]."""
        codes = self._check_latent(codes, "codes")
        x = self.decoder(codes.astype(jnp.dtype(self.config.dtype)))
        return jnp.clip(x.astype(jnp.float32), -1.0, 1.0)

    def decode_bits(self, bits_list: Sequence[jax.Array]) -> jax.Array:
        """Bits of every scale -> images ``(B, H, W, 3)`` (sums the codes, then decodes)."""
        return self.decode(self.bits_to_codes(bits_list))

    def __call__(self, images: jax.Array, schedule=None) -> jax.Array:
        """Reconstruction: encode, quantize, decode. ``(B, H, W, 3) -> (B, H, W, 3)``."""
        quantized, _ = self.encode(images, schedule)
        return self.decode(quantized)


Model = BSQVAE


def default_schedule(latent_grid: tuple[int, int], config: VAEConfig | None = None):
    """The official dynamic schedule (VAE grid) whose last grid is ``latent_grid``.

    Looks through every template and resolution of :mod:`infinity_jax.schedules`.
    """
    config = config or VAEConfig()
    h, w = (int(v) for v in latent_grid)
    patch = config.apply_spatial_patchify
    try:
        target = _schedules.transformer_schedule([(h, w)], patch)[0][1:]
    except _schedules.ScheduleError:
        target = None
    for template in _schedules.H_DIV_W_TEMPLATES:
        hws = _schedules.template_hws(template)
        for n in sorted(_schedules.PN_TO_NUM_SCALES.values()):
            if tuple(hws[n - 1]) == target:
                return _schedules.tokenizer_schedule(hws[:n], patch)
    raise ValueError(f"no official scale schedule ends at the latent grid {h}x{w}; pass one explicitly")


# ----------------------------------------------------------------------------------------------
# initialisation and jitted entry points (loading official weights: convert.load)


def init(config: VAEConfig | None = None, seed: int = 0) -> BSQVAE:
    """A randomly initialised :class:`BSQVAE`, drawn on the host with NumPy (fast, no compiles).

    Same distributions as the constructor (PyTorch's defaults: conv weights and biases
    U(+-1/sqrt(fan_in)), GroupNorm scale 1, bias 0) but different draws than
    ``BSQVAE(config, rngs=nnx.Rngs(seed))``, whose eager per-parameter initialisers take seconds.
    """
    config = config or VAEConfig()
    model = nnx.eval_shape(lambda: BSQVAE(config, rngs=nnx.Rngs(seed)))
    rng = np.random.default_rng(seed)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Conv):
            kh, kw, ci, co = module.kernel.get_value().shape
            bound = 1.0 / math.sqrt(kh * kw * ci)
            module.kernel.set_value(jnp.asarray(rng.uniform(-bound, bound, (kh, kw, ci, co)), jnp.float32))
            module.bias.set_value(jnp.asarray(rng.uniform(-bound, bound, (co,)), jnp.float32))
        elif isinstance(module, GroupNorm):
            module.scale.set_value(jnp.ones((module.num_channels,), jnp.float32))
            module.bias.set_value(jnp.zeros((module.num_channels,), jnp.float32))
    return model


def jit_encode(model: BSQVAE, schedule=None) -> Callable[[jax.Array], tuple[jax.Array, list]]:
    """A jitted ``images -> (quantized, bits_list)`` for one schedule (weights captured now)."""
    graphdef, state = nnx.split(model)
    sched = None if schedule is None else model.resolve_schedule(schedule)

    @jax.jit
    def run(state, images):
        return nnx.merge(graphdef, state).encode(images, sched)

    return lambda images: run(state, images)


def jit_decode(model: BSQVAE) -> Callable[[jax.Array], jax.Array]:
    """A jitted ``codes (B, h, w, d) -> images (B, H, W, 3)``."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, codes):
        return nnx.merge(graphdef, state).decode(codes)

    return lambda codes: run(state, codes)


def jit_decode_bits(model: BSQVAE) -> Callable[[Sequence[jax.Array]], jax.Array]:
    """A jitted ``bits_list -> images (B, H, W, 3)``."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, bits_list):
        return nnx.merge(graphdef, state).decode_bits(bits_list)

    return lambda bits_list: run(state, list(bits_list))
