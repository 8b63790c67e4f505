"""The Infinity trainer: sharded state, one compiled step per aspect-ratio template, the loop.

Step (official order, ``InfinityTrainer.train_step``): uint8 images -> frozen BSQ-VAE encoder
(fp32, no gradient; inside the step, or ahead of it with ``tokenizer.in_step=False``) ->
Bitwise Self-Correction (``flip_requant``) -> teacher-forced transformer (caption dropout,
drop-path) -> bitwise cross-entropy with per-scale reweighting -> gradients -> global-norm
clipping -> AdamW (decay on kernels) -> optional EMA.

Parallelism (MaxText style): a ``(data, fsdp, tensor)`` mesh from ``config.mesh``; parameter
shardings from each parameter's logical axis names through the one rules table
(:mod:`infinity_jax.sharding`); parameters and optimizer state are created by ``jax.jit`` with
``out_shardings``; the step is ``jax.jit(step, in_shardings, out_shardings, donate_argnums=0)``,
lowered and compiled before the loop (memory analysis printed). The batch is split over
``data x fsdp``; each host loads only its rows.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from infinity_jax import state_dict
from infinity_jax.config_files import ConfigError
from infinity_jax.data.bucketing import Bucket, make_buckets
from infinity_jax.data.pipeline import DataPipeline
from infinity_jax.data.sources import build_source, resolve_data_source
from infinity_jax.sharding import batch_axes, make_mesh
from infinity_jax.tokenizer import Encoder, VAEConfig, convert as vae_convert
from infinity_jax.tokenizer.pixels import from_uint8
from infinity_jax.training import compile_report, state as st
from infinity_jax.training.checkpoint import restore_params
from infinity_jax.training.loop import Hook, LoopSettings, Task, TrainLoop
from infinity_jax.training.metrics import peak_tflops
from infinity_jax.training.optimizer import learning_rate_schedule, make_optimizer, peak_learning_rate
from infinity_jax.training.step import apply_update, loss_and_grads
from infinity_jax.training.text_features import OnlineT5, PrecomputedText, RandomText
from infinity_jax.transformer import convert
from infinity_jax.transformer.config import SIZE_NAMES, InfinityConfig, size_config
from infinity_jax.transformer.flops import train_flops
from infinity_jax.transformer.model import Infinity
from infinity_jax.transformer.self_correction import flip_requant, truncate_scales

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ configs
def model_config(config) -> InfinityConfig:
    """The transformer config: an official size with ``config.model`` overrides, or ``size=tiny``."""
    overrides = dict(config.model)
    fields = {f.name for f in dataclasses.fields(InfinityConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown config.model keys {unknown}; valid: {sorted(fields)}")
    try:
        if config.size in SIZE_NAMES:
            return size_config(config.size, **overrides)
        if config.size == "tiny":
            return InfinityConfig(**overrides).validate()
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad model config: {e}") from e
    raise ConfigError(f"unknown size {config.size!r}; choose one of {', '.join(SIZE_NAMES + ('tiny',))}")


def vae_config(config, mcfg: InfinityConfig):
    t = config.tokenizer
    try:
        return VAEConfig(codebook_dim=mcfg.codebook_dim, base_ch=int(t.base_ch), ch_mult=tuple(t.ch_mult),
                         num_res_blocks=int(t.num_res_blocks), patch_size=int(t.patch_size),
                         apply_spatial_patchify=mcfg.apply_spatial_patchify, dtype=str(t.dtype))
    except ValueError as e:
        raise ConfigError(f"bad tokenizer config: {e}") from e


def check_config(config) -> None:
    """Checks that make user mistakes clear messages instead of tracebacks deep in the loop."""
    resolve_data_source(config)
    if config.text.source not in ("t5", "precomputed", "random"):
        raise ConfigError(f"config.text.source must be 't5', 'precomputed' or 'random', got {config.text.source!r}")
    if config.text.source == "t5" and not config.text.t5_path:
        raise ConfigError("config.text.source='t5' needs config.text.t5_path (a local Flan-T5 folder)")
    if config.batch_size < 1 or config.total_steps < 0:
        raise ConfigError("batch_size must be >= 1 and total_steps >= 0")


# ------------------------------------------------------------------------------------ helpers
def maybe_initialize_distributed() -> None:
    """``jax.distributed.initialize()`` when ``INFINITY_JAX_DISTRIBUTED=1`` (TPU pods, SLURM, CPU tests).

    Optional explicit settings: ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``, ``JAX_LOCAL_DEVICE_IDS`` (comma list); otherwise JAX auto-detects
    (TPU metadata, SLURM variables).
    """
    if os.environ.get("INFINITY_JAX_DISTRIBUTED", "").lower() not in ("1", "true", "yes"):
        return
    if jax.distributed.is_initialized():
        return
    kw: dict[str, Any] = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kw["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
    if os.environ.get("JAX_NUM_PROCESSES"):
        kw["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if os.environ.get("JAX_PROCESS_ID"):
        kw["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    if os.environ.get("JAX_LOCAL_DEVICE_IDS"):
        kw["local_device_ids"] = [int(x) for x in os.environ["JAX_LOCAL_DEVICE_IDS"].split(",")]
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kw)


def random_encoder_params(md: st.ModelDef, seed: int) -> dict:
    """Host-side random tokenizer weights (PyTorch's conv init; norms 1/0) for smoke runs and tests:
    instant, where compiling the NNX initialisers costs seconds on CPU."""
    rng = np.random.default_rng(seed)

    def one(path, v):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            bound = 1 / np.sqrt(np.prod(v.shape[:-1]))
            return rng.uniform(-bound, bound, v.shape).astype(np.float32)
        return np.ones(v.shape, np.float32) if name == "scale" else np.zeros(v.shape, np.float32)

    return jax.tree_util.tree_map_with_path(one, st.state_to_tree(md.abstract))


def _host_available_bytes() -> int | None:
    """``MemAvailable`` of /proc/meminfo (None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _device_limit_bytes() -> int | None:
    try:
        return int((jax.local_devices()[0].memory_stats() or {}).get("bytes_limit", 0)) or None
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def _memory_line(compiled) -> str:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return "memory analysis unavailable"
    if m is None:
        return "memory analysis unavailable"
    gib = 1 / 2 ** 30
    return (f"per device: arguments {m.argument_size_in_bytes * gib:.3f} GiB, outputs {m.output_size_in_bytes * gib:.3f} "
            f"GiB (aliased {m.alias_size_in_bytes * gib:.3f}), temporaries {m.temp_size_in_bytes * gib:.3f} GiB, "
            f"code {m.generated_code_size_in_bytes / 2 ** 20:.1f} MiB")


# ------------------------------------------------------------------------------------ trainer
class Trainer:
    """Builds everything a run needs from a config; :meth:`train` runs the loop.

    ``mesh`` overrides ``config.mesh`` (tests); ``workdir=None`` disables checkpoints and logs.
    """

    def __init__(self, config, workdir: str | None = None, *, mesh=None):
        check_config(config)
        self.config = c = config
        self.workdir = workdir
        self.mesh = mesh if mesh is not None else self._mesh()
        self.n_devices = self.mesh.size
        self.batch_axes = batch_axes(self.mesh)
        shards = int(np.prod([self.mesh.shape[a] for a in self.batch_axes])) if self.batch_axes else 1
        self.global_batch = int(c.batch_size)
        if self.global_batch % shards:
            raise ConfigError(f"batch_size {self.global_batch} is not divisible by the {shards} data shards "
                              f"(mesh {dict(self.mesh.shape)})")
        if self.global_batch % jax.process_count():
            raise ConfigError(f"batch_size {self.global_batch} is not divisible by {jax.process_count()} processes")
        self.mcfg = model_config(c)
        self.vcfg = vae_config(c, self.mcfg)
        if c.tokenizer.checkpoint:
            self.vcfg = self._vae_config_from_checkpoint()
        try:
            sched = tuple(tuple(s) for s in c.schedule) if c.schedule else None
            self.buckets: list[Bucket] = make_buckets(c.pn, list(c.templates) if c.templates else None, sched,
                                                      token_stride=self.vcfg.token_stride)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        for b in self.buckets:
            if len(b.scales) > self.mcfg.num_levels:
                raise ConfigError(f"schedule of template {b.h_div_w} has {len(b.scales)} scales, the model "
                                  f"{self.mcfg.num_levels} level embeddings")
        self.text_len = int(c.text.max_len)
        if self.text_len > self.mcfg.text_maxlen:
            raise ConfigError(f"text.max_len {self.text_len} exceeds the model's text_maxlen {self.mcfg.text_maxlen}")
        seed = int(c.seed)
        self._model_factory = lambda: Infinity(self.mcfg, rngs=nnx.Rngs(seed))

        self._vae_factory = lambda: Encoder(self.vcfg, rngs=nnx.Rngs(seed + 1))
        self.md = st.split_model(self._model_factory, self.mesh)
        self.vae_md = st.split_model(self._vae_factory, self.mesh)
        self.peak_lr = peak_learning_rate(c.optim, self.global_batch)
        o = c.optim
        self.lr_fn = learning_rate_schedule(self.peak_lr, int(c.total_steps), warmup_steps=int(o.warmup_steps),
                                            warmup_init=float(o.warmup_init), schedule=str(o.schedule),
                                            final_ratio=float(o.final_ratio))
        self.tx = make_optimizer(o, self.lr_fn)
        self.use_ema = float(o.ema_decay) > 0
        self.state_shardings = st.train_state_shardings(self.tx, self.md, self.use_ema)
        self.batch_sharding = NamedSharding(self.mesh, P(self.batch_axes if self.batch_axes else None))
        self.replicated = NamedSharding(self.mesh, P())
        self._compiled: dict[Any, Any] = {}
        self.online_t5 = None
        self.vae_params = None
        self.loop: TrainLoop | None = None
        self.state = None
        self.peak = peak_tflops(jax.devices()[0].device_kind, float(c.log.peak_tflops))

    # -- construction -----------------------------------------------------------------------
    def _mesh(self):
        try:
            return make_mesh(dict(self.config.mesh))
        except ValueError as e:
            raise ConfigError(f"bad mesh {dict(self.config.mesh)} for {jax.device_count()} devices: {e}") from e

    def _read_weights(self, read, path: str, key: str):
        """``read(path)`` (a state_dict reader) with tensors only unless ``config.trust_pickle``; a
        refused pickle or a damaged file is a ConfigError naming the config ``key``."""
        try:
            return read(path, trust_pickle=True if self.config.get("trust_pickle", False) else None)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None

    def _vae_config_from_checkpoint(self):
        path = self.config.tokenizer.checkpoint
        if not os.path.exists(path):
            raise ConfigError(f"tokenizer checkpoint {path} does not exist")
        self._vae_state_dict = self._read_weights(state_dict.load_state_dict, path, "tokenizer.checkpoint")
        vcfg = vae_convert.infer_config(self._vae_state_dict)
        vcfg = dataclasses.replace(vcfg, dtype=str(self.config.tokenizer.dtype),
                                   apply_spatial_patchify=self.mcfg.apply_spatial_patchify)
        if vcfg.codebook_dim != self.mcfg.codebook_dim:
            raise ConfigError(f"tokenizer checkpoint has d={vcfg.codebook_dim}, the model d={self.mcfg.codebook_dim}")
        return vcfg

    def load_tokenizer(self) -> dict:
        """The frozen encoder's parameters in their shardings (random if no checkpoint: smoke runs only)."""
        if self.vae_params is not None:
            return self.vae_params
        if self.config.tokenizer.checkpoint:
            with jax.default_device(jax.local_devices(backend="cpu")[0]):
                vae = vae_convert.from_official(self._vae_state_dict, self.vcfg)
                host = st.state_to_tree(nnx.split(vae.encoder, nnx.Param, ...)[1])
            self.vae_params = st.place_params(self.vae_md, host)
            del self._vae_state_dict
        else:
            log.warning("no tokenizer checkpoint: using a randomly initialised BSQ-VAE encoder (smoke runs only)")
            self.vae_params = st.place_params(self.vae_md, random_encoder_params(self.vae_md, int(self.config.seed)))
        return self.vae_params

    def init_params(self) -> dict:
        """Fresh parameters: from ``init.official`` (an official checkpoint, read tensor by tensor into
        the shardings), ``init.checkpoint`` (another run's params), or random (the official
        initialisation); always placed directly in their shardings."""
        i = self.config.init
        if i.official:
            if not os.path.exists(i.official):
                raise ConfigError(f"init.official checkpoint {i.official} does not exist")
            # a lazy view, read tensor by tensor
            official = self._read_weights(state_dict.open_state_dict, i.official, "init.official")
            # placed straight into the mesh's shardings: each process reads only what its devices
            # hold, never the whole checkpoint
            model = convert.load(official, self.mcfg, mesh=self.mesh)
            params = st.state_to_tree(nnx.split(model, nnx.Param, ...)[1])
            log.info("initialised from the official checkpoint %s", i.official)
            return jax.tree.map(lambda a, s: a if a.sharding == s else jax.device_put(a, s), params,
                                self.md.shardings)
        if i.checkpoint:
            log.info("initialised from the parameters of %s", i.checkpoint)
            return restore_params(i.checkpoint, self.md.abstract_params())
        return st.init_params(self.md, self._model_factory)

    def init_state(self) -> dict:
        """The initial train state (see :meth:`init_params`), created in its shardings."""
        i = self.config.init
        if not i.official and not i.checkpoint:
            return st.init_train_state(self.tx, self.md, self._model_factory, self.use_ema)
        return st.create_train_state(self.tx, self.md, self.init_params(), self.use_ema)

    def abstract_state(self) -> dict:
        return st.abstract_train_state(self.tx, self.md, self.use_ema)

    def text_fn(self):
        """Per-record text features for the pipeline (None with the online T5 encoder)."""
        t = self.config.text
        C = self.mcfg.text_channels
        if t.source == "random":
            return RandomText(C, self.text_len)
        if t.source == "precomputed":
            return PrecomputedText(C, t.features or None)
        if self.online_t5 is None:
            if not os.path.isdir(t.t5_path):
                raise ConfigError(f"text.t5_path {t.t5_path} is not a folder")
            self.online_t5 = OnlineT5(t.t5_path, self.text_len, t.dtype, mesh=self.mesh, batch_axes=self.batch_axes)
            if self.online_t5.channels != C:
                raise ConfigError(f"the T5 encoder gives {self.online_t5.channels} channels, the model expects "
                                  f"text_channels={C}")
        return None

    def build_pipeline(self):
        d = self.config.data
        source = build_source(self.config)
        text_fn = self.text_fn()
        cache = os.path.join(self.workdir, "aspect_ratios.npy") if self.workdir else None
        return DataPipeline(source, self.buckets, global_batch=self.global_batch,
                            process_index=jax.process_index(), process_count=jax.process_count(),
                            seed=int(d.seed), shuffle=bool(d.shuffle), num_epochs=int(d.num_epochs) or None,
                            num_threads=int(d.num_threads), prefetch=int(d.prefetch), workers=int(d.workers),
                            text_fn=text_fn, text_len=self.text_len,
                            short_caption_prob=float(self.config.text.short_caption_prob),
                            dynamic_length=bool(self.config.text.get("dynamic_length_prompt", False)),
                            aspect_cache=cache)

    # -- the step ---------------------------------------------------------------------------
    def encode_images(self, vae_params, images):
        """The frozen tokenizer's features of uint8 ``images (B, H, W, 3)`` -> ``(B, h, w, d)`` float32
        (a pure function: jit it, or call it inside a step; used by validation and sweeps too)."""
        enc = self.vae_md.merge(vae_params)
        x = from_uint8(images)
        return enc(x.astype(jnp.dtype(self.vcfg.dtype))).astype(jnp.float32)

    def teacher_forcing(self, feats, scales, key):
        """Bitwise Self-Correction on raw features ``(B, H, W, d)`` (``config.bsc``: strength,
        apply_layers, requant) cut to the first ``config.loss.always_training_scales`` scales.
        Returns (x_BLC_wo_prefix, labels, training scales, strengths (B, K))."""
        bsc, mcfg = self.config.bsc, self.mcfg
        out = flip_requant(feats, scales, key if bsc.enabled else None, strength=float(bsc.strength),
                           apply_layers=int(bsc.apply_layers), requant=bool(bsc.get("requant", True)),
                           patchify=mcfg.apply_spatial_patchify)
        x, labels, train_scales = truncate_scales(out, scales, self.training_scale_count(scales))
        return x, labels, train_scales, out.strengths

    def training_scale_count(self, scales) -> int:
        """Scales trained on: ``config.loss.always_training_scales`` (official default 100: all)."""
        return max(1, min(int(self.config.loss.get("always_training_scales", 100)), len(scales)))

    def step_function(self, bucket: Bucket):
        """The pure train step for one template: ``(state, vae_params, batch) -> (state, metrics)``."""
        c = self.config
        scales = bucket.scales
        ema_decay = float(c.optim.ema_decay)

        def step(state, vae_params, batch):
            key = jax.random.fold_in(jax.random.PRNGKey(int(c.seed)), state["step"])
            k_bsc, k_model = jax.random.split(key)
            feats = batch["features"] if "features" in batch else self.encode_images(vae_params, batch["image"])
            x, labels, train_scales, strengths = self.teacher_forcing(jax.lax.stop_gradient(feats), scales, k_bsc)

            out, grads = loss_and_grads(self.md.merge, state["params"], batch["text"], batch["text_mask"],
                                        x, labels, train_scales, rng=k_model,
                                        deterministic=False, reweight=bool(c.loss.reweight_by_scale),
                                        label_smoothing=float(c.loss.label_smoothing))
            params, opt_state, gnorm = apply_update(self.tx, state["params"], state["opt_state"], grads)
            # a non-finite loss or gradient: keep the previous parameters and optimizer state (the
            # batch is consumed; the host counts these steps and stops after too many in a row)
            finite = jnp.isfinite(out.loss) & jnp.isfinite(gnorm)
            keep = lambda new_, old: jnp.where(finite, new_, old)  # noqa: E731
            params = jax.tree.map(keep, params, state["params"])
            opt_state = jax.tree.map(keep, opt_state, state["opt_state"])
            new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
            if self.use_ema:
                new["ema"] = jax.tree.map(lambda e, p: keep(e * ema_decay + (1 - ema_decay) * p, e), state["ema"],
                                          params)
            metrics = {"loss": out.loss, "loss_uniform": out.loss_mean_uniform,
                       "loss_reweighted": out.loss_mean_scale_reweighted, "bit_accuracy": out.bit_accuracy,
                       "token_accuracy": out.token_accuracy, "per_scale_loss": out.per_scale_loss,
                       "per_scale_bit_accuracy": out.per_scale_bit_accuracy, "grad_norm": gnorm,
                       "lr": self.lr_fn(state["step"]), "bsc_strength": jnp.mean(strengths),
                       "nonfinite": 1.0 - finite.astype(jnp.float32)}
            return new, metrics

        return step

    def batch_spec(self, bucket: Bucket) -> dict:
        """Global shapes of the device batch for a template."""
        G, T, C = self.global_batch, self.text_len, self.mcfg.text_channels
        H, W = bucket.pixel
        spec = {"text": jax.ShapeDtypeStruct((G, T, C), self.text_dtype, sharding=self.batch_sharding),
                "text_mask": jax.ShapeDtypeStruct((G, T), jnp.bool_, sharding=self.batch_sharding)}
        if self.config.tokenizer.in_step:
            spec["image"] = jax.ShapeDtypeStruct((G, H, W, 3), jnp.uint8, sharding=self.batch_sharding)
        else:
            s = self.vcfg.stride
            spec["features"] = jax.ShapeDtypeStruct((G, H // s, W // s, self.vcfg.codebook_dim), jnp.float32,
                                                    sharding=self.batch_sharding)
        return spec

    def jitted_step(self, bucket_id: int):
        """``(jax.jit(step) with in/out shardings and donation, its abstract arguments)`` for template
        ``bucket_id``; lower it under ``jax.set_mesh(self.mesh)`` (also for a mesh of compile-only devices)."""
        bucket = self.buckets[bucket_id]
        batch_spec = self.batch_spec(bucket)
        batch_sh = {k: v.sharding for k, v in batch_spec.items()}
        jitted = jax.jit(self.step_function(bucket),
                         in_shardings=(self.state_shardings, self.vae_md.shardings, batch_sh),
                         out_shardings=(self.state_shardings, self.replicated), donate_argnums=(0,))
        return jitted, (self.abstract_state(), self.vae_md.abstract_params(), batch_spec)

    def compiled_step(self, bucket_id: int):
        """The step for template ``bucket_id``, lowered and compiled once (memory analysis logged)."""
        if bucket_id in self._compiled:
            return self._compiled[bucket_id]
        bucket = self.buckets[bucket_id]
        jitted, args = self.jitted_step(bucket_id)
        t0 = time.perf_counter()
        with jax.set_mesh(self.mesh):
            compiled = jitted.lower(*args).compile()
        self.compile_info = {"template": bucket.h_div_w, "seconds": time.perf_counter() - t0,
                             "memory": _memory_line(compiled)}
        log.info("compiled the train step for template h/w=%s (%d tokens) in %.1f s; %s", bucket.h_div_w,
                 bucket.seq_len, self.compile_info["seconds"], self.compile_info["memory"])
        self._compiled[bucket_id] = compiled
        if not self.config.tokenizer.in_step:
            self.compiled_encoder(bucket_id)
        return compiled

    def step_report_text(self, bucket_id: int) -> str:
        """The compile report of the step for ``bucket_id`` (:func:`compile_report.train_report`):
        per-device memory against the chip's HBM, FLOPs, collectives, roofline estimate."""
        try:
            return compile_report.format_train_report(
                compile_report.train_report(self, bucket_id, self.compiled_step(bucket_id)))
        except Exception as e:  # noqa: BLE001 - a report must never stop a run
            log.warning("no compile report: %s: %s", type(e).__name__, e)
            return f"compile report unavailable ({type(e).__name__})"

    def compiled_encoder(self, bucket_id: int):
        """The tokenizer run ahead of the step (``tokenizer.in_step=False``), compiled per template."""
        key = ("encode", bucket_id)
        if key not in self._compiled:
            H, W = self.buckets[bucket_id].pixel
            spec = jax.ShapeDtypeStruct((self.global_batch, H, W, 3), jnp.uint8, sharding=self.batch_sharding)
            fn = jax.jit(self.encode_images, in_shardings=(self.vae_md.shardings, self.batch_sharding),
                         out_shardings=self.batch_sharding)
            with jax.set_mesh(self.mesh):
                self._compiled[key] = fn.lower(self.vae_md.abstract_params(), spec).compile()
        return self._compiled[key]

    @property
    def text_dtype(self):
        """dtype of the step's caption features: the online encoder's (``text.dtype``), else float32."""
        return jnp.dtype(self.config.text.dtype) if self.config.text.source == "t5" else jnp.dtype(jnp.float32)

    def device_batch(self, host: dict) -> dict:
        """This host's numpy rows -> global arrays split over ``data x fsdp``; with the online
        encoder the caption features are computed on the devices and stay there."""
        if "text" not in host:
            text, mask = self.online_t5(list(host["caption"]))
            out = {"text": text, "text_mask": mask}
        else:
            out = {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(host[k]))
                   for k in ("text", "text_mask")}
            out["text"] = out["text"].astype(jnp.float32) if out["text"].dtype != jnp.float32 else out["text"]
        image = jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(host["image"], np.uint8))
        if self.config.tokenizer.in_step:
            out["image"] = image
        else:
            out["features"] = self.compiled_encoder(int(host.get("bucket", 0)))(self.load_tokenizer(), image)
        return out

    def train_step(self, state: dict, host_batch: dict) -> tuple[dict, dict]:
        """One step on a host batch (numpy); returns (new state, metrics). ``state`` is donated."""
        fn = self.compiled_step(int(host_batch.get("bucket", 0)))
        return fn(state, self.load_tokenizer(), self.device_batch(host_batch))

    # -- the loop ---------------------------------------------------------------------------
    @property
    def stopped_by(self) -> int | None:
        """The signal number when SIGTERM / SIGINT stopped the last :meth:`train`, else None."""
        return self.loop.stopped_by if self.loop is not None else None

    def train(self, hooks: tuple[Hook, ...] = (), save_at: tuple[int, ...] = ()) -> dict:
        """Run (or resume) training to ``config.total_steps`` through :class:`TrainLoop` (workdir
        lock, checkpoints, preemption, non-finite guard); returns the last logged metrics.

        ``hooks``: :class:`Hook` s run with ``(step, state)`` (e.g. validation at given steps);
        ``save_at``: steps checkpointed besides ``checkpoint.every``.
        """
        c = self.config
        primary = jax.process_index() == 0
        self.loop = loop = TrainLoop(self.workdir, LoopSettings.from_config(
            c, diverged_advice="lower the learning rate (config.optim.tblr / optim.lr) or raise "
                               "optim.max_nonfinite_steps"))
        run: dict[str, Any] = {"pipeline": None, "batch_log": None, "skipped_total": 0}

        def batches():
            if c.debug.get("memory_check", True):
                self.check_memory()
            run["pipeline"] = self.build_pipeline()
            self.load_tokenizer()
            if c.debug.log_batches and self.workdir:
                run["batch_log"] = open(os.path.join(self.workdir, f"batches_process{jax.process_index()}.jsonl"), "a",
                                        buffering=1)
            return run["pipeline"]

        def restored(meta):
            run["skipped_total"] = int(meta.get("skipped_total", 0)) if primary else 0
            self._check_resumed_config(meta)

        def start(step, resumed, logger):
            pipeline = run["pipeline"]
            msg = (f"{resumed} (data at batch {pipeline.get_state()})" if resumed else
                   "started from scratch" if not c.init.official and not c.init.checkpoint else "initialised")
            total_b, per_dev_b = self.md.param_bytes()
            n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(st.state_to_tree(self.md.abstract)))
            logger.text(f"{msg}; mesh {dict(self.mesh.shape)} on {self.n_devices} devices ({jax.process_count()} "
                        f"processes); {n_params:,} "
                        f"parameters, {total_b / 2 ** 20:.1f} MiB, {per_dev_b / 2 ** 20:.1f} MiB on the most loaded "
                        f"device; global batch {self.global_batch}, peak lr {self.peak_lr:.3g}; templates "
                        f"{pipeline.template_counts()}; {pipeline.batches_per_epoch} batches per epoch")
            if step < int(c.total_steps):  # compile before the loop: the next batch's template now, others when met
                bucket_id = pipeline.next_bucket()
                self.compiled_step(bucket_id)
                logger.text(f"train step compiled in {self.compile_info['seconds']:.1f} s; "
                            f"{self.compile_info['memory']}")
                if primary:
                    logger.text(self.step_report_text(bucket_id))

        def step(state, host, n):
            state, metrics = self.compiled_step(int(host["bucket"]))(state, self.vae_params, self.device_batch(host))
            if run["batch_log"] is not None:
                run["batch_log"].write(json.dumps({"step": n, "batch": int(host["batch"]),
                                                   "bucket": int(host["bucket"]),
                                                   "index": [int(x) for x in host["index"]]}) + "\n")
            return state, metrics

        def metrics(n, m, host, dt):
            bucket = self.buckets[int(host["bucket"])]
            skipped = int(host["skipped"])
            if jax.process_count() > 1:
                skipped = int(np.sum(multihost_utils.process_allgather(np.asarray(skipped, np.int64))))
            run["skipped_total"] += skipped
            trained = bucket.scales[: self.training_scale_count(bucket.scales)]
            L = sum(int(np.prod(sc)) for sc in trained)
            fl = train_flops(self.mcfg, trained, self.text_len) * self.global_batch
            m.update(step_time=dt, images_per_s=self.global_batch / dt, tokens_per_s=self.global_batch * L / dt,
                     tflops_per_device=fl / dt / self.n_devices / 1e12, template=bucket.h_div_w)
            m["data/skipped"] = float(skipped)
            m["data/skipped_total"] = float(run["skipped_total"])
            if self.peak:
                m["mfu"] = m["tflops_per_device"] / self.peak
            return m

        def meta():
            return {"mesh": dict(self.mesh.shape), "skipped_total": run["skipped_total"],
                    "process_count": jax.process_count()}

        def close(last, logger):
            if run["batch_log"] is not None:
                run["batch_log"].close()
            if last:
                logger.text(f"done at step {last['step']}: loss {last['loss']:.4f}; "
                            f"{int(run['skipped_total'])} corrupt or unreadable samples skipped in this run's history")

        task = Task(batches=batches, init_state=self.init_state, abstract_state=self.abstract_state, step=step,
                    metrics=metrics, meta=meta, restored=restored, start=start, close=close)
        try:
            return loop.run(task, hooks, save_at)
        finally:
            self.state = loop.state

    def memory_estimate(self) -> dict:
        """A lower bound of the memory the train state needs before any activation: weights,
        gradients, two AdamW moments (and the EMA), per device (``bytes``: on this host for CPU
        devices, which share its memory; on the most loaded device otherwise)."""
        _, per_dev = self.md.param_bytes()
        copies = 4 + int(self.use_ema)  # params, grads, mu, nu (+ ema)
        local = len(jax.local_devices())
        on_host = jax.devices()[0].platform == "cpu"
        return {"bytes": per_dev * copies * (local if on_host else 1), "copies": copies, "host": on_host}

    def check_memory(self, available_bytes: int | None = None) -> None:
        """Stop with the figure and the fix when :meth:`memory_estimate` exceeds the memory available
        (host RAM for CPU devices, else the device's limit; unknown -> no check)."""
        est = self.memory_estimate()
        if available_bytes is None:
            available_bytes = _host_available_bytes() if est["host"] else _device_limit_bytes()
        if not available_bytes or est["bytes"] <= available_bytes:
            return
        gib = 2 ** 30
        n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(st.state_to_tree(self.md.abstract)))
        where = "host memory" if est["host"] else f"memory on each {jax.devices()[0].device_kind}"
        raise ConfigError(
            f"this run needs at least {est['bytes'] / gib:.1f} GiB of {where} ({n / 1e9:.2f}B parameters x "
            f"{est['copies']} for weights, gradients and AdamW state, before activations) but "
            f"{available_bytes / gib:.1f} GiB is available; use a smaller model (size=tiny or size=layer12), "
            f"more devices, or set config.debug.memory_check=False to try anyway")

    def _check_resumed_config(self, meta: dict) -> None:
        saved = (meta.get("config") or {})
        for key in ("size", "model", "batch_size"):
            if key in saved and json.loads(json.dumps(saved[key])) != json.loads(
                    self.config.to_json_best_effort()).get(key):
                log.warning("resuming with a different config.%s than the checkpoint's (%s)", key, saved[key])
