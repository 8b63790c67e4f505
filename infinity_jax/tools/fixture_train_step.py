"""One official training step recomputed through the project's training code, and its comparison.

A fixture with ``train_step.json`` (settings: optimizer, clipping, loss weighting) and
``golden_train_step.npz`` records one official step from the fixture's weights and inputs. This
module recomputes it with what ``infinity_jax.train`` runs: the parameters as the trainer holds
them (:mod:`infinity_jax.training.state`), :func:`~infinity_jax.training.step.loss_and_grads`
(``infinity_loss``) and :func:`~infinity_jax.training.step.apply_update` with the optimizer of
:func:`~infinity_jax.training.optimizer.make_optimizer` (clipping, AdamW, decay mask). Results
are mapped back to official names by the checkpoint converter:

``loss``, ``grad_norm`` (before clipping), ``clip_value``, ``grad/<name>`` (before clipping),
``param_after/<name>`` and ``weight_decay/<name>`` (the coefficient the decay mask gives).

Agreement rules (:func:`compare_train_step`):

* gradients: ``max |ours - ref| <= GRAD_RTOL * max |ref|`` per tensor;
* parameters after the step: ``|ours - ref| <= UPDATE_ATOL`` wherever the reference gradient
  is not tiny. A first AdamW step moves a parameter by ``lr * c g / (c |g| + eps)`` (``c`` the
  clipping factor; about ``lr * sign(g)``), so near ``g = 0`` the update follows the gradient's
  last bits. Two fp32 implementations agree on gradients to about 1e-6 of a tensor's largest
  |gradient| (summation order); "tiny" is ten times that, ``|g_ref| <= TINY_RTOL * max |g_ref|``
  of the tensor. Above it the comparison still sees the clipping: small gradients
  (``c |g|`` near ``eps``) move less when clipped;
* decay coefficients: equal; ``loss``, ``grad_norm``, ``clip_value``: within ``SCALAR_RTOL``.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from infinity_jax.schedules import normalize_schedule, official_patchify
from infinity_jax.sharding import make_mesh
from infinity_jax.state_dict import load_state_dict
from infinity_jax.tokenizer.convert import from_official as vae_from_official
from infinity_jax.tokenizer.vae import VAEConfig
from infinity_jax.training import state as st
from infinity_jax.training.optimizer import decay_mask, learning_rate_schedule, make_optimizer
from infinity_jax.training.step import apply_update, loss_and_grads
from infinity_jax.transformer.config import InfinityConfig
from infinity_jax.transformer.convert import export_official, load as load_transformer
from infinity_jax.transformer.model import Infinity
from infinity_jax.transformer.self_correction import flip_requant

GRAD_RTOL = 2e-4
UPDATE_ATOL = 1e-5
TINY_RTOL = 1e-5
SCALAR_RTOL = 1e-5
SETTINGS_FILE = "train_step.json"
GOLDEN_FILE = "golden_train_step.npz"


class TrainStepSettingsError(ValueError):
    """``train_step.json`` asks for a step this runner cannot reproduce."""


def text_inputs(inputs: dict):
    """The fixture's text conditioning as padded ``(B, L, C)`` f32 features and a ``(B, L)`` bool mask
    (from ``text_features`` + ``text_mask``/``text_lens``, or the official ``kv_compact`` + ``cu_seqlens_k``)."""
    if "text_features" in inputs:
        feats = inputs["text_features"]
        mask = inputs.get("text_mask")
        if mask is None:
            lens = inputs["text_lens"]
            mask = np.arange(feats.shape[1])[None] < np.asarray(lens)[:, None]
        return feats.astype(np.float32), mask.astype(bool)
    kv, cu = inputs["kv_compact"], inputs["cu_seqlens_k"]
    lens = np.diff(cu)
    T = int(lens.max())
    feats = np.zeros((len(lens), T, kv.shape[-1]), np.float32)
    for i, (a, n) in enumerate(zip(cu[:-1], lens)):
        feats[i, :n] = kv[a:a + n]
    return feats, np.arange(T)[None] < lens[:, None]


def read_settings(folder: str | pathlib.Path) -> dict | None:
    """The step's settings from ``train_step.json`` (None when the fixture has none)."""
    path = pathlib.Path(folder) / SETTINGS_FILE
    if not path.exists():
        return None
    try:
        j = json.loads(path.read_text())
        o, clip = j["optimizer"], j["grad_clip"]
        s = {"name": str(o["name"]).lower(), "lr": float(o["lr"]), "b1": float(o["betas"][0]),
             "b2": float(o["betas"][1]), "eps": float(o["eps"]), "wd": float(o["weight_decay"]),
             "step": int(o.get("step", 1)), "clip": float(clip["value"]),
             "reweight": bool(j["loss"]["reweight_loss_by_scale"]),
             "bsc_strength": float(j.get("bitwise_self_correction", {}).get("noise_apply_strength", 0.0)),
             "cond_drop_rate": float(j.get("cond_drop_rate", 0.0)),
             "drop_path_rate": float(j.get("drop_path_rate", 0.0))}
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise TrainStepSettingsError(f"{path}: malformed settings ({type(e).__name__}: {e})") from e
    if s["step"] != 1:
        raise TrainStepSettingsError(f"{path}: optimizer step {s['step']}; only a first step (1) can be recomputed")
    for key in ("bsc_strength", "cond_drop_rate", "drop_path_rate"):
        if s[key] > 0:
            raise TrainStepSettingsError(f"{path}: {key}={s[key]} makes the official step random; "
                                         f"only a deterministic step (0) can be recomputed")
    return s


def optimizer_config(s: dict) -> ml_collections.ConfigDict:
    """``config.optim`` of a trainer run with these settings (constant lr, no warm-up, no EMA)."""
    return ml_collections.ConfigDict(dict(name=s["name"], lr=s["lr"], b1=s["b1"], b2=s["b2"], eps=s["eps"],
                                          wd=s["wd"], clip=s["clip"], warmup_steps=0, schedule="constant"))


def train_step_inputs(folder: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x_BLC_wo_prefix, labels)`` of the step: the fixture image through the project's tokenizer
    and ``flip_requant`` (bit flipping off), or the fixture's teacher-forced inputs without VAE weights."""
    folder = pathlib.Path(folder)
    conf = json.loads((folder / "manifest.json").read_text())["config"]
    sched = normalize_schedule(conf["scale_schedule"])
    if (folder / "weights_vae.npz").exists():
        vcfg = VAEConfig.from_official(conf)
        vae = vae_from_official(load_state_dict(folder / "weights_vae.npz"), vcfg)
        image = jnp.asarray(np.load(folder / "inputs.npz")["image"].transpose(0, 2, 3, 1))
        feats = jax.jit(vae.encode_features)(image)
        out = flip_requant(feats, sched, patchify=official_patchify(conf))
        return np.asarray(out.x_BLC_wo_prefix), np.asarray(out.labels)
    g = np.load(folder / "golden_transformer.npz")
    return g["x_BLC_wo_prefix"], g["gt_BL_bits"]


def to_official(md: st.ModelDef, tree: Any) -> dict[str, np.ndarray]:
    """A parameter-shaped tree under official names (the converter's export; buffers dropped)."""
    return {k: v for k, v in export_official(md.merge(tree)).items() if not k.endswith("zero_k_bias")}


def fixture_params(folder: str | pathlib.Path, settings: dict, overrides: dict | None = None,
                   state_dict: dict | None = None) -> tuple[st.ModelDef, dict]:
    """The split model and its parameter tree as the trainer holds them (one device), from the
    fixture's ``weights_infinity.npz`` or any ``state_dict`` under the same official names."""
    folder = pathlib.Path(folder)
    conf = json.loads((folder / "manifest.json").read_text())["config"]
    mcfg = InfinityConfig.from_official(conf["infinity"], cond_drop_rate=settings["cond_drop_rate"],
                                        drop_path_rate=settings["drop_path_rate"], **(overrides or {}))
    model = load_transformer(state_dict if state_dict is not None else str(folder / "weights_infinity.npz"), mcfg)
    mcfg = model.cfg  # block naming as found in the checkpoint
    md = st.split_model(lambda: Infinity(mcfg, rngs=nnx.Rngs(0)), make_mesh({"data": 1}, devices=jax.devices()[:1]))
    return md, st.place_params(md, st.state_to_tree(nnx.state(model, nnx.Param)))


def fixture_optimizer(settings: dict):
    """``make_optimizer`` for the step's settings (clipping, AdamW, the decay mask)."""
    return make_optimizer(optimizer_config(settings), learning_rate_schedule(settings["lr"], 1))


def decay_coefficients(md: st.ModelDef, params: Any, wd: float) -> dict[str, np.float32]:
    """The weight decay each parameter gets from ``decay_mask``, under official names."""
    coef = jax.tree.map(lambda m, p: np.full(p.shape, wd if m else 0.0, np.float32), decay_mask(params), params)
    out = {}
    for k, v in to_official(md, coef).items():
        if np.ptp(v) != 0:
            raise AssertionError(f"decay coefficient of {k} is not one value")  # one mask leaf -> one tensor
        out[k] = np.float32(v.flat[0])
    return out


def run_train_step(folder: str | pathlib.Path, x_BLC_wo_prefix=None, labels=None, *,
                   overrides: dict | None = None) -> dict[str, np.ndarray]:
    """Recompute the fixture's official training step; {} when it has no ``train_step.json``.

    ``x_BLC_wo_prefix``/``labels`` default to :func:`train_step_inputs`; ``overrides`` are
    :class:`InfinityConfig` fields (e.g. ``scan_blocks=True``, ``attention_impl="xla"``).
    """
    folder = pathlib.Path(folder)
    s = read_settings(folder)
    if s is None:
        return {}
    if x_BLC_wo_prefix is None or labels is None:
        x_BLC_wo_prefix, labels = train_step_inputs(folder)
    sched = normalize_schedule(json.loads((folder / "manifest.json").read_text())["config"]["scale_schedule"])
    text, mask = (jnp.asarray(a) for a in text_inputs(dict(np.load(folder / "inputs.npz"))))
    md, params = fixture_params(folder, s, overrides)
    tx = fixture_optimizer(s)
    state = st.create_train_state(tx, md, params, ema=False)

    @jax.jit
    def step(state, text, mask, x, labels):
        out, grads = loss_and_grads(md.merge, state["params"], text, mask, x, labels, sched,
                                    rng=jax.random.PRNGKey(0), deterministic=False, reweight=s["reweight"])
        params, _, grad_norm = apply_update(tx, state["params"], state["opt_state"], grads)
        return out.loss, grad_norm, grads, params

    loss, grad_norm, grads, params = jax.device_get(
        step(state, text, mask, jnp.asarray(x_BLC_wo_prefix), jnp.asarray(labels)))
    out = {"loss": np.float32(loss), "grad_norm": np.float32(grad_norm), "clip_value": np.float32(s["clip"])}
    out.update({"grad/" + k: v for k, v in to_official(md, grads).items()})
    out.update({"param_after/" + k: v for k, v in to_official(md, params).items()})
    out.update({"weight_decay/" + k: v for k, v in decay_coefficients(md, params, s["wd"]).items()})
    return out


def tiny_gradient(g_ref: np.ndarray) -> np.ndarray:
    """Where the reference gradient's sign (and so a first AdamW step) is not determined (see module
    doc); nowhere in an all-zero gradient (e.g. ``cfg_uncond`` without caption dropout: no update)."""
    g_ref = np.abs(np.asarray(g_ref))
    top = float(g_ref.max()) if g_ref.size else 0.0
    return g_ref <= TINY_RTOL * top if top > 0 else np.zeros(g_ref.shape, bool)


def compare_train_step(golden: dict, computed: dict) -> list[tuple[str, float, float, bool]]:
    """[(name, error, tolerance, ok)] for every quantity of ``golden`` (a golden_train_step mapping).

    Errors: ``grad/*`` relative to the tensor's max |grad|; ``param_after/*`` absolute, where the
    gradient is not tiny; ``weight_decay/*`` absolute; scalars relative.
    """
    rows = []
    for name in golden:
        ref = np.asarray(golden[name], np.float64)
        if name not in computed:
            rows.append((name, float("nan"), 0.0, False))
            continue
        ours = np.asarray(computed[name], np.float64)
        if ours.shape != ref.shape:
            rows.append((f"{name} shape {ours.shape} vs {ref.shape}", float("nan"), 0.0, False))
            continue
        diff = np.abs(ours - ref)
        if name.startswith("grad/"):
            top = float(np.abs(ref).max())
            err, tol = float(diff.max()) / (top if top > 0 else 1.0), GRAD_RTOL
        elif name.startswith("param_after/"):
            g = golden.get("grad/" + name[len("param_after/"):])
            keep = ~tiny_gradient(np.asarray(g)) if g is not None else np.ones(ref.shape, bool)
            err, tol = (float(diff[keep].max()) if keep.any() else 0.0), UPDATE_ATOL
        elif name.startswith("weight_decay/"):
            err, tol = float(diff.max()), 0.0
        else:
            err, tol = float(diff.max()) / max(float(np.abs(ref).max()), 1e-30), SCALAR_RTOL
        rows.append((name, err, tol, bool(err <= tol)))
    return rows


def summary_lines(rows: list[tuple[str, float, float, bool]]) -> list[str]:
    """The figures ``run_fixture --compare`` prints for the train step."""
    lines = []
    for prefix, what in (("grad/", "worst gradient error (of the tensor's max |grad|)"),
                         ("param_after/", "worst update error (absolute, gradient not tiny)"),
                         ("weight_decay/", "worst decay-coefficient error")):
        sel = [r for r in rows if r[0].startswith(prefix)]
        if sel:
            worst = max(sel, key=lambda r: (not np.isfinite(r[1]), r[1]))
            n_ok = sum(r[3] for r in sel)
            where = f" ({worst[0][len(prefix):]})" if worst[1] != 0 else ""
            lines.append(f"{'ok ' if n_ok == len(sel) else 'OFF'} train step: {what}: {worst[1]:.3g}{where}; "
                         f"tolerance {worst[2]:.3g}; {n_ok}/{len(sel)} tensors agree")
    for r in rows:
        if "/" not in r[0]:
            lines.append(f"{'ok ' if r[3] else 'OFF'} train step: {r[0]} relative error {r[1]:.3g}; "
                         f"tolerance {r[2]:.3g}")
    return lines
