"""Losses of BSQ-VAE tokenizer training: reconstruction, commitment, entropy, perceptual, hinge GAN.

The official Infinity repository ships no tokenizer trainer (its VAE came from BitVAE); this
follows bsq-vit (``transcoder/models/quantizer/bsq.py`` and ``VQLPIPSWithDiscriminator``) and the
defaults carried by the official ``vae_model`` namespace (see the architecture note §1.4, §1.6).

Quantizer terms, computed per scale of the multi-scale residual quantizer (:func:`quantize_with_aux`
mirrors :func:`infinity_jax.tokenizer.quantizer.multiscale_quantize` exactly and also returns the
l2-normalised pre-quantization vectors ``u_k`` of every scale):

* commitment ``beta * mean_k mean ||sg(q_k) - u_k||^2`` (sum over the d channels);
* entropy regulariser ``(gamma0 * H_sample - gamma * H_codebook) / inv_temperature``, where the
  soft code distribution of a vector is factorised over groups of ``group_size`` bits
  (``2**group_size`` sub-codes per group, softmax over ``-distance * inv_temperature``):
  ``H_sample`` is the mean per-vector entropy (sum over groups) and ``H_codebook`` the entropy of
  the batch-averaged distribution (sum over groups). Minimising it makes each code confident and
  the codebook used uniformly. ``persample="analytical"`` uses bsq-vit's closed form per bit
  (``p = sigmoid(-4 u / sqrt(d) * inv_temperature)``) for the per-sample term.

Image terms:

* reconstruction: L1 (official ``recon_loss_type='l1'``) and/or L2;
* edge (optional): L1 between the images' finite differences (sharpens edges and corners);
* perceptual (optional): no pretrained VGG/LPIPS can be downloaded here, so this is a *proxy*:
  L2 distance between channel-normalised activations of a fixed, randomly initialised 3-level
  conv net (random-feature perceptual loss). It is not LPIPS;
* adversarial (optional): a small PatchGAN (``NLayerDiscriminator``: 4x4 stride-2 convs,
  LeakyReLU 0.2, GroupNorm instead of BatchNorm) with hinge losses.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infinity_jax.tokenizer.quantizer import l2_normalize, residual_scales

_HIGHEST = jax.lax.Precision.HIGHEST


# ------------------------------------------------------------------------------- quantizer --

class QuantizeAux(NamedTuple):
    """Output of :func:`quantize_with_aux`.

    quantized: (B, H, W, d) decoder input (sum of all upsampled codes, straight-through);
    bits: per scale (B, h_k, w_k, d) int32; codes: per scale code maps (straight-through);
    normalized: per scale the l2-normalised residual u_k (B, h_k, w_k, d) fed to BSQ;
    partial: per scale the running code sum after that scale (B, H, W, d) (for early-scale
    reconstruction losses, the ``_reg`` recipe).
    """

    quantized: jax.Array
    bits: list
    codes: list
    normalized: list
    partial: list


def quantize_with_aux(features: jax.Array, schedule: Sequence[Sequence[int]]) -> QuantizeAux:
    """Multi-scale residual BSQ of ``features (B, H, W, d)``; same codes as ``multiscale_quantize``."""
    steps = residual_scales(features, schedule)
    return QuantizeAux(steps[-1].summed, [s.bits for s in steps], [s.code for s in steps],
                       [l2_normalize(s.residual) for s in steps], [s.summed for s in steps])


def commitment_loss(codes: Sequence[jax.Array], normalized: Sequence[jax.Array]) -> jax.Array:
    """Mean over scales of ``mean ||sg(q_k) - u_k||^2`` (squared norm over the channels)."""
    terms = [jnp.mean(jnp.sum(jnp.square(jax.lax.stop_gradient(q) - u), axis=-1))
             for q, u in zip(codes, normalized)]
    return sum(terms) / len(terms)


def _entropy(p: jax.Array, axis: int = -1) -> jax.Array:
    return -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-8)), axis=axis)


def _group_codebook(group_size: int) -> np.ndarray:
    """(2**g, g) all sign patterns of g bits in {-1, +1} (bit j of index i = channel j, MSB first)."""
    idx = np.arange(2 ** group_size)[:, None]
    bits = (idx >> np.arange(group_size - 1, -1, -1)[None]) & 1
    return (2.0 * bits - 1.0).astype(np.float32)


def soft_entropy(u: jax.Array, *, group_size: int = 8, inv_temperature: float = 100.0,
                 persample: str = "group") -> tuple[jax.Array, jax.Array]:
    """(per-sample entropy, codebook entropy) of unit vectors ``u (..., d)`` (bsq-vit's soft entropy).

    The d bits are split into ``d / group_size`` groups; each group's soft assignment is a softmax
    over its ``2**group_size`` sub-codes of ``-distance * inv_temperature`` with
    ``distance = -2 <u_g, c / sqrt(d)>``. Entropies are summed over groups (in nats).
    """
    d = u.shape[-1]
    g = min(int(group_size), d)
    if d % g:
        raise ValueError(f"group_size {g} does not divide the codebook dim {d}")
    cb = jnp.asarray(_group_codebook(g) / math.sqrt(d))                      # (2^g, g)
    flat = u.reshape(-1, d // g, g).astype(jnp.float32)                      # (N, G, g)
    logits = 2.0 * jnp.einsum("ngc,kc->ngk", flat, cb, precision=_HIGHEST) * inv_temperature
    prob = jax.nn.softmax(logits, axis=-1)                                   # (N, G, 2^g)
    if persample == "analytical":
        p = jax.nn.sigmoid(-4.0 * flat / math.sqrt(d) * inv_temperature)
        per_sample = jnp.mean(jnp.sum(_entropy(jnp.stack([p, 1 - p], -1)), axis=(-1, -2)))
    elif persample == "group":
        per_sample = jnp.mean(jnp.sum(_entropy(prob), axis=-1))
    else:
        raise ValueError(f"persample must be 'group' or 'analytical', got {persample!r}")
    avg = jnp.mean(prob, axis=0)                                              # (G, 2^g)
    codebook = jnp.sum(_entropy(avg))
    return per_sample, codebook


def entropy_loss(normalized: Sequence[jax.Array], *, group_size: int = 8, inv_temperature: float = 100.0,
                 gamma0: float = 1.0, gamma: float = 1.0, persample: str = "group"
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean over scales of ``(gamma0 H_sample - gamma H_codebook) / inv_temperature``.

    Returns (penalty, mean per-sample entropy, mean codebook entropy); scales with fewer than 2
    vectors in the batch still count (their codebook entropy is just small).
    """
    pen, hs, hc = [], [], []
    for u in normalized:
        s, c = soft_entropy(u, group_size=group_size, inv_temperature=inv_temperature, persample=persample)
        pen.append((gamma0 * s - gamma * c) / inv_temperature)
        hs.append(s)
        hc.append(c)
    n = len(pen)
    return sum(pen) / n, sum(hs) / n, sum(hc) / n


def codebook_usage(bits: jax.Array, group_size: int = 8) -> jax.Array:
    """Fraction of each group's ``2**group_size`` sub-codes used in ``bits (..., d)``, averaged over groups."""
    d = bits.shape[-1]
    g = min(int(group_size), d)
    b = bits.reshape(-1, d // g, g).astype(jnp.int32)
    idx = jnp.sum(b * (2 ** jnp.arange(g - 1, -1, -1)), axis=-1)             # (N, G)
    onehot = jax.nn.one_hot(idx, 2 ** g, dtype=jnp.float32)                  # (N, G, 2^g)
    used = jnp.max(onehot, axis=0)
    return jnp.mean(jnp.sum(used, -1) / 2 ** g)


# --------------------------------------------------------------------------- image losses --

def reconstruction_loss(x: jax.Array, y: jax.Array, *, l1: float = 1.0, l2: float = 0.0) -> jax.Array:
    """``l1 * mean|x - y| + l2 * mean (x - y)^2`` on images in [-1, 1]."""
    diff = x.astype(jnp.float32) - y.astype(jnp.float32)
    out = jnp.zeros((), jnp.float32)
    if l1:
        out = out + l1 * jnp.mean(jnp.abs(diff))
    if l2:
        out = out + l2 * jnp.mean(jnp.square(diff))
    return out


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean PSNR (dB) of images in [-1, 1] (peak-to-peak 2), per image then averaged."""
    mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))
    return jnp.mean(10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10)))


def psnr_uint8(x: np.ndarray, y: np.ndarray) -> float:
    """Mean PSNR (dB) of uint8 images (peak 255), per image then averaged (as skimage)."""
    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    mse = np.mean(np.square(d), axis=tuple(range(1, d.ndim)))
    return float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))


class RandomFeatures:
    """A fixed, randomly initialised conv net: the perceptual *proxy* (no pretrained weights here).

    Three levels of (3x3 conv, ReLU, 2x2 average pool) with ``widths`` channels, He-normal
    weights drawn with numpy from ``seed``; never trained.
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 96), seed: int = 1234):
        rng = np.random.default_rng(seed)
        self.kernels = []
        cin = 3
        for w in widths:
            k = rng.standard_normal((3, 3, cin, w)).astype(np.float32) * math.sqrt(2.0 / (9 * cin))
            self.kernels.append(jnp.asarray(k))
            cin = w

    def __call__(self, x: jax.Array) -> list:
        feats = []
        h = x.astype(jnp.float32)
        for k in self.kernels:
            h = jax.lax.conv_general_dilated(h, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = jax.nn.relu(h)
            feats.append(h)
            B, H, W, C = h.shape
            h = h.reshape(B, H // 2, 2, W // 2, 2, C).mean(axis=(2, 4))
        return feats


def _unit(f: jax.Array) -> jax.Array:
    return f / jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True) + 1e-10)


def perceptual_loss(x: jax.Array, y: jax.Array, net: RandomFeatures) -> jax.Array:
    """Random-feature perceptual proxy: sum over the levels of ``mean ||unit(f(x)) - unit(f(y))||^2``
    (channel-normalised activations of the fixed random net, as LPIPS normalises VGG's)."""
    fx, fy = net(x), net(y)
    return sum(jnp.mean(jnp.sum(jnp.square(_unit(a) - _unit(b)), axis=-1)) for a, b in zip(fx, fy))


def gradient_loss(x: jax.Array, y: jax.Array) -> jax.Array:
    """L1 between the images' horizontal and vertical finite differences (edge sharpness)."""
    dx = lambda a: a[:, :, 1:] - a[:, :, :-1]  # noqa: E731
    dy = lambda a: a[:, 1:] - a[:, :-1]  # noqa: E731
    return jnp.mean(jnp.abs(dx(x) - dx(y))) + jnp.mean(jnp.abs(dy(x) - dy(y)))


# -------------------------------------------------------------------------- discriminator --

def _dnorm(ch: int) -> tuple[int, int]:
    groups = 32 if ch % 32 == 0 else (16 if ch % 16 == 0 else 1)
    return groups, ch


class PatchDiscriminator(nnx.Module):
    """PatchGAN (pix2pix ``NLayerDiscriminator``) with GroupNorm: logits ``(B, h, w, 1)``.

    conv4x4 s2 (no norm) -> LeakyReLU; ``n_layers - 1`` x [conv4x4 s2 -> GN -> LeakyReLU] with
    doubling width (max 8x); conv4x4 s1 -> GN -> LeakyReLU; conv4x4 s1 -> 1 channel.
    """

    def __init__(self, base_ch: int = 32, n_layers: int = 2, *, rngs: nnx.Rngs):
        chans = [base_ch * min(2 ** i, 8) for i in range(n_layers + 1)]
        self.conv_in = nnx.Conv(3, chans[0], (4, 4), strides=2, padding=1, rngs=rngs)
        convs, norms = [], []
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            convs.append(nnx.Conv(chans[i - 1], chans[i], (4, 4), strides=stride, padding=1, use_bias=False,
                                  rngs=rngs))
            g, c = _dnorm(chans[i])
            norms.append(nnx.GroupNorm(c, num_groups=g, rngs=rngs))
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.conv_out = nnx.Conv(chans[-1], 1, (4, 4), strides=1, padding=1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.leaky_relu(self.conv_in(x.astype(jnp.float32)), 0.2)
        for conv, norm in zip(self.convs, self.norms):
            h = jax.nn.leaky_relu(norm(conv(h)), 0.2)
        return self.conv_out(h)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Discriminator hinge loss: ``(mean relu(1 - D(x)) + mean relu(1 + D(G(z)))) / 2``."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
    """Generator hinge loss: ``-mean D(G(z))``."""
    return -jnp.mean(logits_fake)


__all__ = [
    "QuantizeAux", "quantize_with_aux", "commitment_loss", "soft_entropy", "entropy_loss", "codebook_usage",
    "reconstruction_loss", "psnr", "psnr_uint8", "RandomFeatures", "perceptual_loss", "gradient_loss", "PatchDiscriminator",
    "hinge_d_loss", "hinge_g_loss",
]
