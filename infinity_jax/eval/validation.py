"""Validation loss and bit accuracy as the official evaluation computes them.

Official reference: ``evaluation/validation_loss/validation_loss.py`` (run by ``scripts/eval.sh``):
a held-out set of captioned images, full captions (``short_prob=0``), the model in eval mode (no
caption dropout, no drop-path), teacher forcing through Bitwise Self-Correction with
``noise_apply_strength=0.2``, ``noise_apply_layers=20`` (every scale) and re-quantisation, labels =
the bits of the residual given the *corrupted* earlier scales, and the metrics

* ``loss``: bitwise cross-entropy with per-scale reweighting (``loss_reweight_by_scale``);
* ``loss_uniform``: the plain mean over tokens (``loss_bit_mean``);
* ``bit_accuracy`` / ``token_accuracy`` (all d bits right), as fractions (official: percent);
* ``per_scale_loss``, ``per_scale_bit_accuracy``, ``per_scale_token_accuracy`` (K,).

Differences, all to make the number reproducible and comparable across runs: the flips are drawn
per image from a fixed seed and the image's index in the held-out set (the official script draws
per batch of 2 from the global NumPy generator), so the corruption of image i is the same for
every model, every compute point and every batch size or device count (common random numbers:
differences between models are not blurred by different flips). The per-image metrics are kept,
so callers can bootstrap over the held-out images.

Entry points: :func:`validation_batch` (a model, tokenizer features, text features -> per-image
metrics, jit-able), :func:`summarize` (per-image metrics -> means and standard errors) and
:class:`Validator` (a model definition, a held-out set, a mesh and a frozen tokenizer: metrics for
any parameters of that model; :meth:`Validator.for_trainer` builds one from a trainer and its
``config.validation``).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from infinity_jax.data.bucketing import BatchPlan
from infinity_jax.data.pipeline import BatchLoader
from infinity_jax.data.sources import build_source
from infinity_jax.schedules import scale_offsets
from infinity_jax.sharding import batch_axes
from infinity_jax.training.state import ModelDef
from infinity_jax.transformer.loss import bit_cross_entropy, predicted_bits, scale_weights
from infinity_jax.transformer.self_correction import flip_requant

log = logging.getLogger(__name__)

#: Official validation settings (scripts/eval.sh, validation_loss.py).
VAL_STRENGTH = 0.2
VAL_APPLY_LAYERS = 20

#: Per-image metrics; the ``per_scale_*`` ones are (N, K).
METRICS = ("loss", "loss_uniform", "bit_accuracy", "token_accuracy", "per_scale_loss", "per_scale_bit_accuracy",
           "per_scale_token_accuracy")


def _segments(scales: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    offs = np.asarray(scale_offsets(scales))
    seg = np.concatenate([np.full(offs[i + 1] - offs[i], i) for i in range(len(scales))])
    return seg, np.diff(offs)


def per_sample_metrics(logits: jax.Array, labels: jax.Array, scales: Sequence[Sequence[int]]) -> dict:
    """Per-image metrics of ``logits (B, L, 2d)`` against ``labels (B, L, d)``.

    The batch means equal :func:`infinity_jax.transformer.loss.infinity_loss`'s
    ``loss_mean_scale_reweighted``, ``loss_mean_uniform``, ``bit_accuracy``, ``token_accuracy``,
    ``per_scale_loss`` and ``per_scale_bit_accuracy``.
    """
    lpt = bit_cross_entropy(logits, labels)  # (B, L)
    w = jnp.asarray(scale_weights(scales, True))
    correct = (predicted_bits(logits) == labels).astype(jnp.float32)  # (B, L, d)
    bit_tok = jnp.mean(correct, axis=-1)
    tok = jnp.all(correct > 0, axis=-1).astype(jnp.float32)
    seg, counts = _segments(scales)
    onehot = jnp.asarray(np.eye(len(scales), dtype=np.float32)[seg] / counts[seg][:, None])  # (L, K) means

    return {
        "loss": lpt @ w,
        "loss_uniform": jnp.mean(lpt, axis=-1),
        "bit_accuracy": jnp.mean(bit_tok, axis=-1),
        "token_accuracy": jnp.mean(tok, axis=-1),
        "per_scale_loss": lpt @ onehot,
        "per_scale_bit_accuracy": bit_tok @ onehot,
        "per_scale_token_accuracy": tok @ onehot,
    }


def sample_keys(seed: int, indices: jax.Array) -> jax.Array:
    """One PRNG key per held-out image: ``fold_in(PRNGKey(seed), index)``."""
    base = jax.random.PRNGKey(int(seed))
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))


def bsc_inputs(features: jax.Array, scales: Sequence[Sequence[int]], keys: jax.Array | None, *,
               strength: float = VAL_STRENGTH, apply_layers: int = VAL_APPLY_LAYERS, requant: bool = True,
               patchify: bool = False, fixed: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Teacher-forcing inputs ``(B, L-1, d')``, labels ``(B, L, d')`` and flip strengths ``(B, K)``.

    Every image gets its own flip strengths ``p_k ~ U{0, .01, ..., strength}`` per scale and its own
    flips (the official BSC with a batch of one), from its key; ``keys=None`` or ``strength=0``: clean.
    ``fixed=True`` flips every bit of the first ``apply_layers`` scales with probability exactly
    ``strength`` instead (not the official recipe; a lower-variance variant).
    """
    if keys is None or strength <= 0:
        out = flip_requant(features, scales, None, patchify=patchify)
        return out.x_BLC_wo_prefix, out.labels, jnp.zeros((features.shape[0], len(scales)), jnp.float32)
    K = len(scales)
    per_scale = (np.where(np.arange(K) < int(apply_layers), float(strength), 0.0).astype(np.float32)
                 if fixed else None)

    def one(f, k):
        o = flip_requant(f[None], scales, k, strength=float(strength), apply_layers=int(apply_layers),
                         requant=requant, patchify=patchify, strengths=per_scale)
        return o.x_BLC_wo_prefix[0], o.labels[0], o.strengths[0]

    return jax.vmap(one)(features, keys)


def validation_batch(model, text: jax.Array, text_mask: jax.Array, features: jax.Array,
                     scales: Sequence[Sequence[int]], keys: jax.Array | None, *, strength: float = VAL_STRENGTH,
                     apply_layers: int = VAL_APPLY_LAYERS, requant: bool = True, fixed: bool = False) -> dict:
    """Per-image validation metrics (see :data:`METRICS`) of ``model`` on one batch.

    Args:
      model: an :class:`infinity_jax.transformer.model.Infinity` (called with ``deterministic=True``).
      text, text_mask: caption features ``(B, T, Ct)`` and their mask ``(B, T)`` (full captions).
      features: raw tokenizer features ``(B, H, W, d)`` on the VAE grid of ``scales``' last scale.
      keys: one PRNG key per image (:func:`sample_keys`), or None for clean teacher forcing.
    Returns a dict of per-image arrays, plus ``bsc_strength`` (B, K).
    """
    patchify = bool(model.cfg.apply_spatial_patchify)
    x, labels, strengths = bsc_inputs(features, scales, keys, strength=strength, apply_layers=apply_layers,
                                      requant=requant, patchify=patchify, fixed=fixed)
    logits = model(text, text_mask, x.astype(jnp.float32), scales, deterministic=True)
    out = per_sample_metrics(logits, labels, scales)
    out["bsc_strength"] = strengths
    return out


def summarize(per_sample: Mapping[str, Any]) -> dict:
    """Means over images (lists for per-scale metrics) and the standard error of each scalar metric."""
    out: dict[str, Any] = {}
    n = None
    for k in METRICS:
        if k not in per_sample:
            continue
        a = np.asarray(per_sample[k], np.float64)
        n = a.shape[0]
        m = a.mean(axis=0)
        out[k] = m.tolist() if a.ndim > 1 else float(m)
        if a.ndim == 1:
            out[f"{k}_se"] = float(a.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    out["n_images"] = int(n or 0)
    return out


# ------------------------------------------------------------------------------ held-out set
class HeldOutSet:
    """Host arrays of a held-out set: images (N,H,W,3) uint8, text (N,T,C) float32, text_mask (N,T),
    captions (N,), index (N,) record ids, and the schedule they were resized for."""

    def __init__(self, images, text, text_mask, captions, index, scales, pixel):
        self.images, self.text, self.text_mask = images, text, text_mask
        self.captions, self.index = captions, index
        self.scales, self.pixel = tuple(tuple(int(v) for v in s) for s in scales), tuple(pixel)

    def __len__(self) -> int:
        return int(len(self.images))


def validation_source(data, vcfg):
    """The held-out source of a ``config.validation`` section, built like the training data ``data``
    (a ``config.data`` section) with the section's source settings.

    ``vcfg.source``: ``factory`` (``vcfg.factory``, a built-in name or 'module:callable', with
    ``vcfg.factory_kwargs``),
    ``arrayrecord`` (``vcfg.path``), ``tfds`` (``vcfg.tfds``) or ``synthetic``.
    """
    c = ml_collections.ConfigDict({"data": data.to_dict()})
    d = c.data
    d.source = str(vcfg.get("source", "factory"))
    if d.source == "factory":
        d.factory = str(vcfg.factory)
        d.factory_kwargs = dict(vcfg.get("factory_kwargs", {}))
    elif d.source == "arrayrecord":
        d.path = str(vcfg.path)
    elif d.source == "tfds" and "tfds" in vcfg:
        d.tfds.update(dict(vcfg.tfds))
    elif d.source == "synthetic" and "synthetic" in vcfg:
        d.synthetic.update(dict(vcfg.synthetic))
    return build_source(c)


def build_heldout(trainer, vcfg) -> HeldOutSet:
    """Load ``vcfg.num_images`` held-out records (in order) for the trainer's first template.

    Every image is resized and centre-cropped to one template (the trainer's bucket nearest to
    ``vcfg.h_div_w``, default 1.0), so the per-scale metrics are over the same scales; captions are
    the full ones (official ``short_prob=0``), their features from the trainer's text source.
    """
    source = validation_source(trainer.config.data, vcfg)
    n = min(int(vcfg.num_images), len(source))
    if n < 1:
        raise ValueError("the validation set is empty")
    hw = float(vcfg.get("h_div_w", 1.0))
    b = int(np.argmin([abs(bk.h_div_w - hw) for bk in trainer.buckets]))
    bucket = trainer.buckets[b]
    ids = np.zeros(n, np.int32) + b
    plan = BatchPlan(ids, len(trainer.buckets), n, shuffle=False, num_epochs=1)
    text_fn = trainer.text_fn()
    loader = BatchLoader(_Ordered(source, n), plan, trainer.buckets, text_fn=text_fn,
                         text_len=trainer.text_len if text_fn is not None else None, short_caption_prob=0.0)
    batch = loader(0, (b, np.arange(n)))
    if "text" not in batch:  # online T5
        batch["text"], batch["text_mask"] = trainer.online_t5.encode_host(list(batch["caption"]))
    return HeldOutSet(batch["image"], np.asarray(batch["text"], np.float32), np.asarray(batch["text_mask"], bool),
                      batch["caption"], batch["index"], bucket.scales, bucket.pixel)


class _Ordered:
    """The first ``n`` records of a source (so a huge or endless source is only read where needed)."""

    def __init__(self, source, n: int):
        self.source, self.n = source, int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return self.source[int(i)]


def trainer_encoder(trainer) -> Callable[[Iterable[jax.Array]], list[jax.Array]]:
    """``trainer``'s frozen tokenizer as a :class:`Validator` encoder: loads its weights, encodes every
    batch (uint8 ``(B, H, W, 3)``, batch-sharded) to features ``(B, h, w, d)`` with the trainer's own
    preprocessing, and lets the weights go."""
    enc = jax.jit(trainer.encode_images, in_shardings=(trainer.vae_md.shardings, trainer.batch_sharding),
                  out_shardings=trainer.batch_sharding)

    def encode(batches: Iterable[jax.Array]) -> list[jax.Array]:
        vae = trainer.load_tokenizer()
        return [enc(vae, b) for b in batches]

    return encode


class Validator:
    """Evaluates parameters of one model on a held-out set (see the module docstring).

    The tokenizer features of the held-out images are computed once (the tokenizer is frozen) and
    reused for every call. The batch is split over the mesh's ``data`` and ``fsdp`` axes; ``batch_size``
    is rounded to a multiple of their size.
    """

    def __init__(self, model: ModelDef, heldout: HeldOutSet, mesh: Mesh, vcfg, *,
                 encode: Callable[[Iterable[jax.Array]], list[jax.Array]]):
        """
        Args:
          model: the transformer's definition on ``mesh`` (``merge(params)``, parameter ``shardings``).
          heldout: the held-out set (:func:`build_heldout`).
          mesh: the device mesh of ``model``.
          vcfg: the ``config.validation`` settings: ``strength``, ``apply_layers``, ``requant``,
            ``fixed_strength``, ``seed``, ``batch_size`` (defaults: the official ones).
          encode: the frozen tokenizer: image batches (uint8 ``(B, H, W, 3)``, batch-sharded) -> their
            features ``(B, h, w, d)``; called once, on first use (:func:`trainer_encoder`).
        """
        self.model, self.heldout, self.mesh, self.vcfg, self.encode = model, heldout, mesh, vcfg, encode
        self.strength = float(vcfg.get("strength", VAL_STRENGTH))
        self.apply_layers = int(vcfg.get("apply_layers", VAL_APPLY_LAYERS))
        self.requant = bool(vcfg.get("requant", True))
        self.fixed = bool(vcfg.get("fixed_strength", False))
        self.seed = int(vcfg.get("seed", 0))
        axes = batch_axes(mesh)
        self.batch_sharding = NamedSharding(mesh, P(axes if axes else None))
        self.replicated = NamedSharding(mesh, P())
        n = len(heldout)
        shards = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        bs = min(int(vcfg.get("batch_size", 32)), n)
        bs = max(shards, bs // shards * shards)
        if n % bs:
            log.warning("validation: %d images is not a multiple of the batch %d; the last %d are dropped",
                        n, bs, n % bs)
        self.batch_size = bs
        self.num_batches = n // bs
        if self.num_batches < 1:
            raise ValueError(f"the validation set ({n} images) cannot fill a batch of {bs}")
        self._features: list | None = None
        self._fn = None

    @classmethod
    def for_trainer(cls, trainer, vcfg, heldout: HeldOutSet | None = None) -> Validator:
        """The validator of ``trainer``'s model, mesh and frozen tokenizer; the held-out set from
        ``vcfg`` (:func:`build_heldout`) unless given."""
        heldout = heldout if heldout is not None else build_heldout(trainer, vcfg)
        return cls(trainer.md, heldout, trainer.mesh, vcfg, encode=trainer_encoder(trainer))

    def _put(self, rows: np.ndarray):
        P_, p = jax.process_count(), jax.process_index()
        local = rows.shape[0] // P_
        return jax.make_array_from_process_local_data(self.batch_sharding, rows[p * local:(p + 1) * local])

    def _batches(self):
        h = self.heldout
        for i in range(self.num_batches):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield i, sl, h

    def features(self) -> list:
        """Tokenizer features of every batch (computed on first use)."""
        if self._features is None:
            with jax.set_mesh(self.mesh):
                self._features = self.encode(self._put(np.asarray(h.images[sl], np.uint8))
                                             for _, sl, h in self._batches())
        return self._features

    def _eval_fn(self):
        if self._fn is None:
            md = self.model
            scales = self.heldout.scales
            kw = dict(strength=self.strength, apply_layers=self.apply_layers, requant=self.requant, fixed=self.fixed)
            seed = self.seed

            def fn(params, text, mask, feats, idx):
                model = md.merge(params)
                keys = sample_keys(seed, idx) if self.strength > 0 else None
                return validation_batch(model, text, mask, feats, scales, keys, **kw)

            self._fn = jax.jit(fn, in_shardings=(md.shardings,) + (self.batch_sharding,) * 4,
                               out_shardings=self.replicated)
        return self._fn

    def __call__(self, params) -> dict:
        """Per-image metrics (host numpy arrays, (N,) or (N, K)) for ``params``."""
        fn = self._eval_fn()
        feats = self.features()
        outs = []
        t0 = time.perf_counter()
        with jax.set_mesh(self.mesh):
            for (i, sl, h), f in zip(self._batches(), feats):
                idx = np.arange(sl.start, sl.stop, dtype=np.int32)
                outs.append(jax.device_get(fn(params, self._put(h.text[sl]), self._put(h.text_mask[sl]), f,
                                              self._put(idx))))
        res = {k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in outs[0]}
        log.info("validation on %d images in %.1f s", res["loss"].shape[0], time.perf_counter() - t0)
        return res
