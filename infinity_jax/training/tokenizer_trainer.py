"""Training the BSQ-VAE tokenizer (the official repository does not ship a tokenizer trainer).

Step: uint8 images (optionally a random patch-aligned crop) -> encoder -> multi-scale residual BSQ
over ``config.schedule`` (straight-through) -> decoder -> losses
(:mod:`infinity_jax.training.tokenizer_losses`): reconstruction (L1 / L2), commitment, entropy
regulariser, optional early-scale reconstruction (the ``_reg`` recipe), optional edge (image
gradient) loss, optional perceptual proxy,
optional hinge GAN with a PatchGAN discriminator (own optimizer, from ``loss.gan.start``) ->
Adam(W) with global-norm clipping -> optional EMA of the weights.

Input comes from the same Grain pipeline as the Infinity trainer
(:class:`infinity_jax.data.pipeline.DataPipeline`: one template whose image size is
``patch_size * last grid``); checkpoints are the same Orbax step folders
(:class:`infinity_jax.training.checkpoint.Checkpointer`: state + data iterator + meta), so running
the same command again resumes. Data parallel over all devices (parameters replicated, batch split).

At the end (and whenever :meth:`TokenizerTrainer.export` is called) the weights (EMA when enabled)
are written under their official names to ``WORKDIR/tokenizer.safetensors`` with
``WORKDIR/tokenizer_config.json``: the Infinity trainer reads it through
``config.tokenizer.checkpoint`` and :func:`infinity_jax.tokenizer.load` too.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from infinity_jax.data.bucketing import Bucket
from infinity_jax.data.pipeline import DataPipeline
from infinity_jax.data.records import decode_image, resize_center_crop
from infinity_jax.data.sources import build_source, resolve_factory
from infinity_jax.schedules import normalize_schedule
from infinity_jax.sharding import make_mesh
from infinity_jax.tokenizer import BSQVAE, VAEConfig, init
from infinity_jax.tokenizer.convert import to_official
from infinity_jax.tokenizer.pixels import from_uint8, to_uint8
from infinity_jax.tokenizer.vae import ResnetBlock
from infinity_jax.training import tokenizer_losses as TL
from infinity_jax.training.loop import Hook, LoopSettings, Task, TrainLoop
from infinity_jax.training.optimizer import build_optimizer, learning_rate_schedule, ndim_decay_mask

log = logging.getLogger(__name__)

EXPORT_NAME = "tokenizer.safetensors"
EXPORT_CONFIG = "tokenizer_config.json"


class TokenizerConfigError(ValueError):
    """A mistake in the tokenizer training config."""


def vae_config(config):
    t = config.model
    try:
        return VAEConfig(codebook_dim=int(t.codebook_dim), base_ch=int(t.base_ch), ch_mult=tuple(t.ch_mult),
                         num_res_blocks=int(t.num_res_blocks), patch_size=int(t.patch_size),
                         dtype=str(t.get("dtype", "float32")))
    except ValueError as e:
        raise TokenizerConfigError(f"bad tokenizer model config: {e}") from e


def latent_schedule(config) -> tuple[tuple[int, int, int], ...]:
    """The tokenizer's own latent grids ``config.schedule`` as ``(1, h, w)`` (for a transformer
    schedule they are ``schedules.tokenizer_schedule(scales, patchify)``)."""
    if not config.schedule:
        raise TokenizerConfigError("config.schedule (the latent grids, e.g. ((1, 1), (2, 2), (4, 4), (8, 8))) is required")
    return tuple(normalize_schedule(tuple(tuple(s) for s in config.schedule)))


def crop_schedule(schedule, grid: tuple[int, int]) -> tuple[tuple[int, int, int], ...]:
    """The scales of ``schedule`` that fit a ``grid`` crop, ending with the crop's own grid."""
    out = [s for s in schedule if s[1] <= grid[0] and s[2] <= grid[1] and (s[1], s[2]) != tuple(grid)]
    return tuple(out) + ((1, int(grid[0]), int(grid[1])),)


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}{k}/")
    else:
        yield prefix[:-1], tree


class TokenizerTrainer:
    """Builds everything from a config (see ``configs/tokenizer.py``); :meth:`train` runs the loop."""

    def __init__(self, config, workdir: str | None = None, *, mesh=None):
        self.config = c = config
        self.workdir = workdir
        self.vcfg = vae_config(c)
        self.schedule = latent_schedule(c)
        grid = self.schedule[-1][1:]
        self.image_hw = (grid[0] * self.vcfg.patch_size, grid[1] * self.vcfg.patch_size)
        self.crop = int(c.get("crop", 0) or 0)
        if self.crop:
            p = self.vcfg.patch_size
            if self.crop % p or self.crop > min(self.image_hw):
                raise TokenizerConfigError(f"crop {self.crop} must be a multiple of the patch size {p} and at most "
                                           f"the image size {self.image_hw}")
        self.mesh = mesh if mesh is not None else make_mesh({"data": -1})
        self.global_batch = int(c.batch_size)
        if self.global_batch % self.mesh.size:
            raise TokenizerConfigError(f"batch_size {self.global_batch} is not divisible by the {self.mesh.size} devices")
        self.repl = NamedSharding(self.mesh, P())
        self.batch_sh = NamedSharding(self.mesh, P(("data", "fsdp", "tensor")))
        seed = int(c.seed)
        abstract = nnx.eval_shape(lambda: BSQVAE(self.vcfg, rngs=nnx.Rngs(seed)))
        self.graphdef, abs_params = nnx.split(abstract, nnx.Param)
        self._abs_params = nnx.to_pure_dict(abs_params)
        L = c.loss
        self.use_gan = float(L.gan.weight) > 0
        self.use_perceptual = float(L.perceptual.weight) > 0
        self.perc_net = TL.RandomFeatures(seed=int(L.perceptual.seed)) if self.use_perceptual else None
        if self.use_gan:
            g = L.gan
            dabs = nnx.eval_shape(lambda: TL.PatchDiscriminator(int(g.base_ch), int(g.n_layers), rngs=nnx.Rngs(seed + 7)))
            self.d_graphdef, d_params = nnx.split(dabs, nnx.Param)
            self._abs_dparams = nnx.to_pure_dict(d_params)
        o = c.optim
        warm = max(int(o.warmup_steps), 1)
        self.lr_fn = learning_rate_schedule(float(o.lr), max(int(c.total_steps), warm + 1), warmup_steps=warm,
                                            warmup_init=float(o.warmup_init), schedule=str(o.schedule),
                                            final_ratio=float(o.final_ratio))
        self.tx = self._make_tx(self.lr_fn, o)
        if self.use_gan:
            self.dtx = self._make_tx(float(L.gan.lr or o.lr), o)
        self.ema_decay = float(o.ema_decay)
        self._step_fn = None
        self.loop: TrainLoop | None = None
        self.state = None
        self._recon_fn = None

    @staticmethod
    def _make_tx(lr, o):
        """Adam(W) on the tensors with ndim >= 2, after ``optax`` global-norm clipping."""
        return build_optimizer(lr, b1=o.b1, b2=o.b2, eps=1e-8, weight_decay=o.wd, clip=float(o.clip),
                               decay_mask=ndim_decay_mask, torch_clip=False)

    # ------------------------------------------------------------------------------ state --
    def _abs_state(self):
        """A fresh abstract ``nnx.State`` of the parameters (to fill with a pure dict)."""
        if getattr(self, "_abs_state_cache", None) is None:
            self._abs_state_cache = nnx.split(nnx.eval_shape(lambda: BSQVAE(self.vcfg, rngs=nnx.Rngs(0))), nnx.Param)[1]
        return jax.tree.map(lambda v: v, self._abs_state_cache)

    def init_params(self) -> dict:
        """Random init (PyTorch defaults, drawn on the host); with ``init.zero_init_residual`` the
        last conv of every ResnetBlock is zeroed (blocks start as identities: much faster early
        training); the encoder's output layer is rescaled so that the latent has RMS
        ``init.feature_rms`` on a first batch (0: off)."""
        model = init(self.vcfg, int(self.config.seed))
        if bool(self.config.init.get("zero_init_residual", False)):
            for _, mod in nnx.iter_modules(model):
                if isinstance(mod, ResnetBlock):  # each block starts as the identity (its skip path)
                    mod.conv2.kernel.set_value(jnp.zeros_like(mod.conv2.kernel.get_value()))
                    mod.conv2.bias.set_value(jnp.zeros_like(mod.conv2.bias.get_value()))
        target = float(self.config.init.feature_rms)
        if target > 0:
            imgs = self._probe_images(16)
            x = from_uint8(imgs)
            rms = float(jnp.sqrt(jnp.mean(jnp.square(model.encode_features(x)))))
            s = target / max(rms, 1e-6)
            conv = model.encoder.conv_out
            conv.kernel.set_value(conv.kernel.get_value() * s)
            conv.bias.set_value(conv.bias.get_value() * s)
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def _probe_images(self, n: int) -> np.ndarray:
        src = self.build_source()
        H, W = self.image_hw

        return np.stack([resize_center_crop(decode_image(src[i]["image"]), H, W) for i in range(min(n, len(src)))])

    def init_state(self) -> dict:
        params = self.init_params()
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params)}
        if self.ema_decay > 0:
            state["ema"] = jax.tree.map(jnp.copy, params)
        if self.use_gan:
            g = self.config.loss.gan
            d = TL.PatchDiscriminator(int(g.base_ch), int(g.n_layers), rngs=nnx.Rngs(int(self.config.seed) + 7))
            dp = nnx.to_pure_dict(nnx.state(d, nnx.Param))
            state["disc_params"] = dp
            state["disc_opt_state"] = self.dtx.init(dp)
        return jax.device_put(state, self.repl)

    def abstract_state(self) -> dict:
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.repl),
                            jax.eval_shape(self._abstract_state_fn))

    def _abstract_state_fn(self):
        params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), self._abs_params)
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params)}
        if self.ema_decay > 0:
            state["ema"] = params
        if self.use_gan:
            dp = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), self._abs_dparams)
            state["disc_params"] = dp
            state["disc_opt_state"] = self.dtx.init(dp)
        return state

    # ------------------------------------------------------------------------------- data --
    def build_source(self):
        return build_source(self.config)

    def build_pipeline(self):
        d = self.config.data
        bucket = Bucket(self.image_hw[0] / self.image_hw[1], self.schedule, self.image_hw)
        return DataPipeline(self.build_source(), [bucket], global_batch=self.global_batch,
                            process_index=jax.process_index(), process_count=jax.process_count(),
                            seed=int(d.seed), shuffle=bool(d.shuffle), num_epochs=int(d.num_epochs) or None,
                            num_threads=int(d.num_threads), prefetch=int(d.prefetch), workers=int(d.workers))

    def _crop(self, images: np.ndarray, step: int) -> np.ndarray:
        if not self.crop:
            return images
        p, c = self.vcfg.patch_size, self.crop
        H, W = images.shape[1:3]
        rng = np.random.default_rng((int(self.config.seed), 11, int(step)))
        oy = int(rng.integers(0, (H - c) // p + 1)) * p
        ox = int(rng.integers(0, (W - c) // p + 1)) * p
        return images[:, oy:oy + c, ox:ox + c]

    # ------------------------------------------------------------------------------- step --
    def losses(self, params, x, disc_params=None, gan_on=None):
        """All generator losses of one batch ``x (B, H, W, 3)`` in [-1, 1]: (total, metrics)."""
        L = self.config.loss
        model = nnx.merge(self.graphdef, self._state_of(params))
        feats = model.encode_features(x)
        g = (feats.shape[1], feats.shape[2])
        sched = self.schedule if g == tuple(self.schedule[-1][1:]) else crop_schedule(self.schedule, g)
        qa = TL.quantize_with_aux(feats, sched)
        y = model.decoder(qa.quantized.astype(jnp.dtype(self.vcfg.dtype))).astype(jnp.float32)
        rec = TL.reconstruction_loss(x, y, l1=float(L.l1), l2=float(L.l2))
        com = TL.commitment_loss(qa.codes, qa.normalized)
        e = L.entropy
        ent, hs, hc = TL.entropy_loss(qa.normalized, group_size=int(e.group_size),
                                      inv_temperature=float(e.inv_temperature), gamma0=float(e.gamma0),
                                      gamma=float(e.gamma), persample=str(e.persample))
        total = rec + float(L.commit) * com + float(e.weight) * ent
        m = {"recon": rec, "commit": com, "entropy_penalty": ent, "entropy_sample": hs, "entropy_codebook": hc,
             "psnr": TL.psnr(x, jnp.clip(y, -1, 1)), "codebook_usage": TL.codebook_usage(qa.bits[-1], int(e.group_size))}
        if float(L.early_scales.weight) > 0 and len(sched) > 1:
            ks = range(len(sched) - 1)
            early = sum(TL.reconstruction_loss(x, model.decoder(qa.partial[k]).astype(jnp.float32),
                                               l1=float(L.l1), l2=float(L.l2)) for k in ks) / len(ks)
            total = total + float(L.early_scales.weight) * early
            m["recon_early"] = early
        if float(L.edge.weight) > 0:
            edge = TL.gradient_loss(x, y)
            total = total + float(L.edge.weight) * edge
            m["edge"] = edge
        if self.use_perceptual:
            perc = TL.perceptual_loss(x, y, self.perc_net)
            total = total + float(L.perceptual.weight) * perc
            m["perceptual"] = perc
        if self.use_gan and disc_params is not None:
            d = nnx.merge(self.d_graphdef, self._dstate_of(disc_params))
            gl = TL.hinge_g_loss(d(y))
            total = total + gan_on * float(L.gan.weight) * gl
            m["gan_g"] = gl
        m["loss"] = total
        return total, (m, y)

    def _state_of(self, params):
        state = self._abs_state()
        nnx.replace_by_pure_dict(state, params)
        return state

    def _dstate_of(self, dparams):
        if getattr(self, "_dstate_cache", None) is None:
            g = self.config.loss.gan
            self._dstate_cache = nnx.split(nnx.eval_shape(lambda: TL.PatchDiscriminator(
                int(g.base_ch), int(g.n_layers), rngs=nnx.Rngs(0))), nnx.Param)[1]
        state = jax.tree.map(lambda v: v, self._dstate_cache)
        nnx.replace_by_pure_dict(state, dparams)
        return state

    def step_function(self):
        c = self.config
        gan_start = int(c.loss.gan.start) if self.use_gan else 0

        def step(state, images):
            x = from_uint8(images)
            gan_on = (state["step"] >= gan_start).astype(jnp.float32) if self.use_gan else None
            dparams = state.get("disc_params")
            (loss, (m, y)), grads = jax.value_and_grad(self.losses, has_aux=True)(state["params"], x, dparams, gan_on)
            m["grad_norm"] = optax.global_norm(grads)
            updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
            if self.ema_decay > 0:
                new["ema"] = jax.tree.map(lambda e, p: e * self.ema_decay + (1 - self.ema_decay) * p, state["ema"], params)
            if self.use_gan:
                def d_loss(dp):
                    d = nnx.merge(self.d_graphdef, self._dstate_of(dp))
                    return TL.hinge_d_loss(d(x), d(jax.lax.stop_gradient(y)))

                dl, dg = jax.value_and_grad(d_loss)(dparams)
                dupd, dopt = self.dtx.update(dg, state["disc_opt_state"], dparams)
                new_dp = optax.apply_updates(dparams, dupd)
                new["disc_params"] = jax.tree.map(lambda a, b: jnp.where(gan_on > 0, a, b), new_dp, dparams)
                new["disc_opt_state"] = jax.tree.map(lambda a, b: jnp.where(gan_on > 0, a, b), dopt,
                                                     state["disc_opt_state"])
                m["gan_d"] = dl
            m["lr"] = self.lr_fn(state["step"])
            return new, m

        return step

    def compiled_step(self):
        if self._step_fn is None:
            self._step_fn = jax.jit(self.step_function(), in_shardings=(self.repl, self.batch_sh),
                                    out_shardings=(self.repl, self.repl), donate_argnums=(0,))
        return self._step_fn

    def reconstruct(self, params, images: np.ndarray, batch: int = 32) -> np.ndarray:
        """uint8 images -> uint8 reconstructions through the full schedule (jitted, batched)."""
        if self._recon_fn is None:
            sched = self.schedule

            def rec(params, imgs):
                model = nnx.merge(self.graphdef, self._state_of(params))
                x = from_uint8(imgs)
                return model(x, sched)

            self._recon_fn = jax.jit(rec)

        out = []
        for i in range(0, len(images), batch):
            chunk = np.asarray(images[i:i + batch])
            n = len(chunk)
            if n < batch and len(images) > batch:  # keep one compiled shape
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, 0)])
            out.append(to_uint8(self._recon_fn(params, jnp.asarray(chunk)))[:n])
        return np.concatenate(out)

    def eval_images(self) -> np.ndarray | None:
        """Held-out images for the PSNR metric (``config.eval``), or None."""
        e = self.config.eval
        if not int(e.num_images):
            return None
        if e.factory:
            imgs = resolve_factory(e.factory, "config.eval.factory")(**dict(e.factory_kwargs))
            return np.asarray(imgs[: int(e.num_images)], np.uint8)
        return None

    # ------------------------------------------------------------------------------- loop --
    @property
    def stopped_by(self) -> int | None:
        """The signal number when SIGTERM / SIGINT stopped the last :meth:`train`, else None."""
        return self.loop.stopped_by if self.loop is not None else None

    def train(self) -> dict:
        """Run (or resume) to ``config.total_steps`` through :class:`TrainLoop`; export the weights
        (unless stopped by a signal); return the last metrics."""
        c = self.config
        primary = jax.process_index() == 0
        total = int(c.total_steps)
        self.loop = loop = TrainLoop(self.workdir, LoopSettings.from_config(
            c, format_fn=format_line, tag_prefix="tokenizer", desc="tokenizer",
            diverged_advice="lower the learning rate (config.optim.lr) or raise optim.max_nonfinite_steps"))
        eval_imgs = self.eval_images() if primary else None
        fn = self.compiled_step()

        def start(step, resumed, logger):
            n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(self._abs_params))
            logger.text(f"tokenizer: {resumed or 'started from scratch'}; {n_params:,} parameters; "
                        f"d={self.vcfg.codebook_dim}, patch "
                        f"{self.vcfg.patch_size}, images {self.image_hw[0]}x{self.image_hw[1]}"
                        f"{f' (trained on {self.crop}x{self.crop} crops)' if self.crop else ''}, schedule "
                        f"{[s[1:] for s in self.schedule]}; batch {self.global_batch}, {total} steps")

        def step(state, host, n):
            imgs = self._crop(np.asarray(host["image"], np.uint8), n - 1)
            return fn(state, jax.make_array_from_process_local_data(self.batch_sh, imgs))

        def metrics(n, m, host, dt):
            return {**m, "step_time": dt, "images_per_s": self.global_batch / dt}

        hooks = ()
        if eval_imgs is not None and int(c.eval.every):
            hooks = (Hook(lambda n, state: {"eval/psnr": self.eval_psnr(state, eval_imgs)}, every=int(c.eval.every),
                          at=(total,), line=lambda n, m: f"step {n:>6d} | held-out PSNR {m['eval/psnr']:.2f} dB"),)
        task = Task(batches=self.build_pipeline, init_state=self.init_state, abstract_state=self.abstract_state,
                    step=step, metrics=metrics, start=start)
        try:
            last = dict(loop.run(task, hooks))
        finally:
            self.state = loop.state
        if self.stopped_by:
            return last
        if self.workdir and primary:
            self.export(self.workdir)
        if eval_imgs is not None and "eval/psnr" not in last:
            last["eval/psnr"] = self.eval_psnr(self.state, eval_imgs)
        return last

    def final_params(self, state: dict | None = None) -> dict:
        state = state if state is not None else self.state
        return state["ema"] if "ema" in state else state["params"]

    def eval_psnr(self, state, images: np.ndarray) -> float:
        rec = self.reconstruct(self.final_params(state), images)
        return TL.psnr_uint8(images, rec)

    def export(self, directory: str | os.PathLike, state: dict | None = None) -> pathlib.Path:
        """Write ``tokenizer.safetensors`` (official names, OIHW) and ``tokenizer_config.json``."""
        from safetensors.numpy import save_file  # noqa: PLC0415

        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model = self.model_from_params(jax.device_get(self.final_params(state)))
        sd = {k: np.ascontiguousarray(v) for k, v in to_official(model).items()}
        path = directory / EXPORT_NAME
        tmp = path.with_suffix(".tmp")
        save_file(sd, str(tmp))
        os.replace(tmp, path)
        cfg = {"vae": dataclasses.asdict(self.vcfg), "schedule": [list(s) for s in self.schedule],
               "image_size": list(self.image_hw)}
        (directory / EXPORT_CONFIG).write_text(json.dumps(cfg, indent=1))
        return path

    def model_from_params(self, params: dict):
        return nnx.merge(self.graphdef, self._state_of(jax.tree.map(jnp.asarray, params)))


def format_line(step: int, m: dict) -> str:
    parts = [f"step {step:>6d}", f"| loss {m.get('loss', float('nan')):.4f}", f"recon {m.get('recon', float('nan')):.4f}",
             f"psnr {m.get('psnr', float('nan')):.2f}", f"commit {m.get('commit', float('nan')):.4f}",
             f"H {m.get('entropy_sample', float('nan')):.3f}/{m.get('entropy_codebook', float('nan')):.2f}",
             f"usage {m.get('codebook_usage', float('nan')):.2f}"]
    for k in ("recon_early", "edge", "perceptual", "gan_g", "gan_d"):
        if k in m:
            parts.append(f"{k} {m[k]:.4f}")
    parts.append(f"gnorm {m.get('grad_norm', float('nan')):.3f}")
    if "step_time" in m:
        parts.append(f"{m['step_time'] * 1e3:.0f} ms")
    return " ".join(parts)


__all__ = ["TokenizerTrainer", "TokenizerConfigError", "vae_config", "latent_schedule", "crop_schedule", "EXPORT_NAME",
           "EXPORT_CONFIG"]
