r"""Recompute a reference fixture's golden quantities with infinity-jax, and compare.

  python -m infinity_jax.tools.run_fixture --fixture ../shared/fixtures/official-tiny --out out/tiny.npz --compare

A fixture folder holds ``manifest.json`` (``config``: official constructor arguments, the scale
schedule, sampling settings), ``weights_vae.npz`` / ``weights_infinity.npz`` (official state_dict
names), ``inputs.npz`` (``image`` (B,3,H,W) in [-1,1], caption ``text_features``/``text_mask`` or
the packed ``kv_compact``/``cu_seqlens_k``) and ``golden_*.npz``. The runner builds the models from
the weights and config, runs them on the inputs, and writes every quantity it can compute under
the golden files' names, in the official layouts:

* tokenizer (golden_vae): ``raw_features``, ``z_quantized``, ``bits_scaleSS``, ``var_input_scaleSS``,
  ``summed_codes_from_bits``, ``recon``, ``recon_from_bits``;
* transformer (golden_transformer): inputs and labels from the image through the project's own
  tokenizer (``x_BLC_wo_prefix``, ``gt_BL_bits``), then ``logits_BLV``, the losses, ``bit_accuracy``
  and the intermediates; with the fixture's own ``x_BLC_wo_prefix`` the same under ``teacher_forced/``;
  the weights under their official names (exported back from the NNX model);
* sampling (golden_sampling): per run of ``config.sampling`` ``RUN/head_logits_scaleSS``,
  ``RUN/bits_scaleSS``, ``RUN/summed_codes``, ``RUN/decoded_image``, ``RUN/image_uint8_bgr``
  (greedy runs free; ``official_stochastic`` replays the recorded bits; runs with ``gt_leak``
  feed the tokenizer's bits of the input image for that many scales);
* one training step (golden_train_step, when the fixture has ``train_step.json``): ``loss``,
  ``grad_norm``, ``clip_value``, ``grad/<name>``, ``param_after/<name>``, ``weight_decay/<name>``
  through the project's training code (:mod:`infinity_jax.tools.fixture_train_step`), compared
  by its own rules (gradients relative to each tensor's max, updates where the gradient is not tiny).

``--set scan_blocks=true`` (repeatable) overrides transformer config fields.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

import numpy as np

_RUNS_NEEDING_RECORDED_BITS = ("official_stochastic",)


def _nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def run_fixture(folder: str | pathlib.Path, log=print, overrides: dict | None = None) -> dict[str, np.ndarray]:
    """All quantities this package can compute for a fixture folder, under the golden names.

    ``overrides``: :class:`InfinityConfig` fields set on top of the fixture's config.
    """
    # deferred so that --help and flag errors need no jax (0.2 s instead of 7 s)
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from infinity_jax.sampling.sampler import Sampler, SamplingConfig  # noqa: PLC0415
    from infinity_jax.schedules import normalize_schedule, official_patchify, tokenizer_schedule  # noqa: PLC0415
    from infinity_jax.state_dict import load_state_dict  # noqa: PLC0415
    from infinity_jax.tokenizer.convert import from_official as vae_from_official  # noqa: PLC0415
    from infinity_jax.tokenizer.vae import VAEConfig, jit_decode  # noqa: PLC0415
    from infinity_jax.tools.fixture_train_step import run_train_step, text_inputs  # noqa: PLC0415
    from infinity_jax.transformer.config import InfinityConfig  # noqa: PLC0415
    from infinity_jax.transformer.convert import export_official, load as load_transformer  # noqa: PLC0415
    from infinity_jax.transformer.loss import infinity_loss  # noqa: PLC0415
    from infinity_jax.transformer.self_correction import flip_requant  # noqa: PLC0415

    folder = pathlib.Path(folder)
    man = json.loads((folder / "manifest.json").read_text())
    conf = man["config"]
    inputs = dict(np.load(folder / "inputs.npz"))
    sched = normalize_schedule(conf["scale_schedule"])  # the transformer's grids
    patch = official_patchify(conf)  # tokenizer grid = 2 x transformer grid when set
    out: dict[str, np.ndarray] = {}
    K = len(sched)

    vae = None
    if (folder / "weights_vae.npz").exists():
        t0 = time.perf_counter()
        vcfg = VAEConfig.from_official(conf)
        vae = vae_from_official(load_state_dict(folder / "weights_vae.npz"), vcfg)
        vs = tokenizer_schedule(sched, patch)
        image = jnp.asarray(inputs["image"].transpose(0, 2, 3, 1))
        feats = jax.jit(vae.encode_features)(image)
        q = vae.quantize(feats, vs)
        out["raw_features"] = _nchw(feats)
        out["z_quantized"] = _nchw(q.quantized)
        for k, b in enumerate(q.bits):
            out[f"bits_scale{k:02d}"] = np.asarray(b)[:, None].astype(np.int32)
        # golden var_input_scaleSS is the VAE-internal one (area resizing of the running code sum);
        # the transformer itself is fed the bilinear version (x_BLC_wo_prefix below).
        for k, v in enumerate(vae.var_inputs(q.bits, vs, mode="area", packed=False)):
            out[f"var_input_scale{k + 1:02d}"] = _nchw(v)[:, :, None]
        decode = jit_decode(vae)
        codes = vae.bits_to_codes(q.bits)
        out["summed_codes_from_bits"] = _nchw(codes)[:, :, None]
        out["recon"] = _nchw(decode(q.quantized))
        out["recon_from_bits"] = _nchw(decode(codes))
        vae_bits = list(q.bits)
        log(f"tokenizer: {time.perf_counter() - t0:.1f} s")

    if (folder / "weights_infinity.npz").exists():
        t0 = time.perf_counter()
        tcfg = InfinityConfig.from_official(conf, **(overrides or {}))
        model = load_transformer(str(folder / "weights_infinity.npz"), tcfg)
        text, mask = text_inputs(inputs)
        text, mask = jnp.asarray(text), jnp.asarray(mask)
        out.update(export_official(model))

        def forward(x, labels, prefix):
            logits, inter = model(text, mask, x, sched, return_intermediates=True)
            lo = infinity_loss(logits, labels, sched)
            m = np.asarray(mask)
            res = {"x_BLC_wo_prefix": np.asarray(x), "gt_BL_bits": np.asarray(labels).astype(np.int32),
                   "logits_BLV": np.asarray(logits), "loss_per_token": np.asarray(lo.loss_per_token),
                   "loss_mean_uniform": np.asarray(lo.loss_mean_uniform),
                   "loss_mean_scale_reweighted": np.asarray(lo.loss_mean_scale_reweighted),
                   "bit_accuracy": np.asarray(lo.bit_accuracy), "rope_cos_sin": np.asarray(inter["rope_cos_sin"]),
                   "text_norm_out": np.asarray(inter["text_norm_out"])[m],
                   "ca_kv_compact": np.asarray(inter["ca_kv"])[m]}
            for name in ("cond_BD", "shared_ada_lin_out", "word_embed_out", "head_nm_out"):
                res[name] = np.asarray(inter[name])
            res.update({k: np.asarray(v) for k, v in inter.items() if k.startswith("block")})
            out.update({prefix + k: v for k, v in res.items()})

        bsc = None
        if vae is not None:
            raw = jnp.asarray(out["raw_features"].transpose(0, 2, 3, 1))
            bsc = flip_requant(raw, sched, patchify=patch)
            forward(bsc.x_BLC_wo_prefix, bsc.labels, "")
        golden_t = folder / "golden_transformer.npz"
        if golden_t.exists():
            g = np.load(golden_t)
            if "x_BLC_wo_prefix" in g.files and "gt_BL_bits" in g.files:
                forward(jnp.asarray(g["x_BLC_wo_prefix"]), jnp.asarray(g["gt_BL_bits"]),
                        "" if vae is None else "teacher_forced/")
        log(f"transformer: {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        step = run_train_step(folder, *((bsc.x_BLC_wo_prefix, bsc.labels) if bsc is not None else ()),
                              overrides=overrides)
        if step:
            out.update(step)
            log(f"train step: {time.perf_counter() - t0:.1f} s")

        if vae is not None and conf.get("sampling"):
            t0 = time.perf_counter()
            sampler = Sampler(model)
            decode = jit_decode(vae)
            golden_s = np.load(folder / "golden_sampling.npz") if (folder / "golden_sampling.npz").exists() else None
            for run, s in conf["sampling"].items():
                settings = SamplingConfig(cfg=s.get("cfg", 1.0), tau=s.get("tau", 1.0), top_k=s.get("top_k", 0),
                                          top_p=s.get("top_p", 0.0))
                replay, n_replay = None, None
                if int(s.get("gt_leak", 0)) > 0:
                    replay, n_replay = vae_bits, int(s["gt_leak"])
                elif run in _RUNS_NEEDING_RECORDED_BITS or (s.get("top_k", 0) != 1 and s.get("top_p", 0) > 0):
                    if golden_s is None or f"{run}/bits_scale00" not in golden_s.files:
                        log(f"sampling run {run}: stochastic and no recorded bits to replay; skipped")
                        continue
                    replay = [golden_s[f"{run}/bits_scale{k:02d}"][:, 0] for k in range(K)]
                res = sampler.generate(text, mask, sched, settings=settings, replay_bits=replay, replay_scales=n_replay,
                                       seeds=[int(s.get("g_seed", 0)) + i for i in range(text.shape[0])], decode=False)
                for k in range(K):
                    out[f"{run}/head_logits_scale{k:02d}"] = np.asarray(res.head_logits[k])
                    out[f"{run}/bits_scale{k:02d}"] = np.asarray(res.bits[k])[:, None].astype(np.int32)
                img = decode(res.summed_codes)
                out[f"{run}/summed_codes"] = _nchw(res.summed_codes)
                out[f"{run}/decoded_image"] = _nchw(img)
                u8 = ((np.asarray(img) + 1) / 2 * 255).astype(np.uint8)  # truncation, as the official return
                out[f"{run}/image_uint8_bgr"] = u8[..., ::-1].copy()
            log(f"sampling: {time.perf_counter() - t0:.1f} s")
    return out


def compare(folder: str | pathlib.Path, computed: dict[str, np.ndarray]) -> list[tuple[str, str, float, bool]]:
    """[(golden file, name, error, ok)] for every golden quantity: max |error| within 1e-4, bits
    exact, uint8 within 1; the train step by its own rules (``fixture_train_step.compare_train_step``)."""
    # deferred so that --help and flag errors need no jax (0.2 s instead of 7 s)
    from infinity_jax.tools.fixture_train_step import GOLDEN_FILE, compare_train_step  # noqa: PLC0415

    rows = []
    for gfile in sorted(pathlib.Path(folder).glob("golden_*.npz")):
        g = np.load(gfile)
        if gfile.name == GOLDEN_FILE:
            rows += [(gfile.name, name, err, ok) for name, err, _, ok in compare_train_step(dict(g), computed)]
            continue
        for name in g.files:
            ref = g[name]
            if name not in computed:
                rows.append((gfile.name, name, float("nan"), False))
                continue
            ours = np.asarray(computed[name])
            if ours.shape != ref.shape:
                rows.append((gfile.name, name + f" shape {ours.shape} vs {ref.shape}", float("nan"), False))
                continue
            if np.issubdtype(ref.dtype, np.integer):
                if ref.dtype == np.uint8:
                    err = float(np.abs(ours.astype(int) - ref.astype(int)).max())
                    rows.append((gfile.name, name, err, err <= 1))
                else:
                    err = float(np.sum(ours != ref))
                    rows.append((gfile.name, name + " (bits differing)", err, err == 0))
            else:
                err = float(np.abs(ours.astype(np.float64) - ref).max()) if ref.size else 0.0
                rows.append((gfile.name, name, err, err <= 1e-4))
    return rows


def main(argv=None):
    import argparse  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", required=True, help="fixture folder (manifest.json, weights_*.npz, inputs.npz)")
    ap.add_argument("--out", required=True, help="output .npz")
    ap.add_argument("--compare", action="store_true", help="print the agreement with the fixture's golden files")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a transformer config field, e.g. scan_blocks=true (repeatable)")
    args = ap.parse_args(argv)
    # deferred so that --help and flag errors need no jax (0.2 s instead of 7 s)
    from infinity_jax.tools.fixture_train_step import (GOLDEN_FILE, GRAD_RTOL, SCALAR_RTOL,  # noqa: PLC0415
                                                       UPDATE_ATOL, TrainStepSettingsError, compare_train_step,
                                                       summary_lines)

    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        sys.exit(f"error: {e}")
    folder = pathlib.Path(args.fixture)
    if not (folder / "manifest.json").exists():
        sys.exit(f"error: {folder} is not a fixture folder (no manifest.json)")
    if not (folder / "inputs.npz").exists():
        sys.exit(f"error: {folder} has no inputs.npz")
    try:
        computed = run_fixture(folder, overrides=overrides)
    except TrainStepSettingsError as e:
        sys.exit(f"error: {e}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **computed)
    print(f"wrote {len(computed)} arrays to {out}")
    if args.compare:
        rows = compare(folder, computed)
        bad = [r for r in rows if not r[3]]
        for f, name, err, ok in rows:
            if f != GOLDEN_FILE and not name.startswith(("block_chunks", "text_proj", "cfg_uncond", "head.", "head_nm",
                                                          "lvl_", "pos_", "word_embed.", "shared_ada_lin.",
                                                          "text_norm.")):
                print(f"  {'ok ' if ok else 'OFF'} {f:24s} {name:48s} {err:.3g}")
        golden_step = pathlib.Path(folder) / GOLDEN_FILE
        if golden_step.exists():
            for line in summary_lines(compare_train_step(dict(np.load(golden_step)), computed)):
                print("  " + line)
        print(f"{len(rows) - len(bad)}/{len(rows)} golden quantities agree (float within 1e-4, bits exact, "
              f"uint8 within 1; train step: gradients within {GRAD_RTOL:g} of each tensor's max, updates within "
              f"{UPDATE_ATOL:g} where the gradient is not tiny, decay coefficients equal, scalars within "
              f"{SCALAR_RTOL:g} relative)")
        for f, name, err, ok in bad:
            print(f"  differs: {f} {name}: {err}")
        for line in explain_sampling_differences(folder, computed):
            print("  " + line)


def parse_overrides(items) -> dict:
    """``["scan_blocks=true", "attention_impl=xla"]`` -> {field: value} (JSON values, else strings)."""
    # deferred so that --help and flag errors need no jax (0.2 s instead of 7 s)
    from infinity_jax.transformer.config import InfinityConfig  # noqa: PLC0415

    fields = {f.name for f in dataclasses.fields(InfinityConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def explain_sampling_differences(folder, computed) -> list[str]:
    """For sampling runs whose bits differ: where they first differ and the official logit margin there.

    A bit whose guided logits are within ~1e-5 of each other (a near-tie) may round either way
    between implementations; after it, the run follows a different (equally valid) path.
    """
    folder = pathlib.Path(folder)
    path = folder / "golden_sampling.npz"
    if not path.exists():
        return []
    conf = json.loads((folder / "manifest.json").read_text())["config"]
    g = np.load(path)
    lines = []
    for run, st in conf.get("sampling", {}).items():
        k = 0
        while f"{run}/bits_scale{k:02d}" in g.files:
            ref, ours = g[f"{run}/bits_scale{k:02d}"], computed.get(f"{run}/bits_scale{k:02d}")
            if ours is not None and ours.shape == ref.shape and np.any(ours != ref):
                raw = g[f"{run}/head_logits_scale{k:02d}"] / st.get("tau", 1.0)
                B = ref.shape[0]
                cfg = st.get("cfg", 1.0)
                guided = cfg * raw[:B] + (1 - cfg) * raw[B:] if raw.shape[0] == 2 * B else raw
                margin = np.abs(guided[..., 1::2] - guided[..., 0::2]).reshape(ref.shape)
                diff = ours != ref
                lines.append(f"{run}: first differs at scale {k}: {int(diff.sum())} bit(s), official guided-logit "
                             f"margin there {margin[diff].max():.2g} (near-tie if below 1e-5); later scales then "
                             f"follow a different path")
                break
            k += 1
    return lines


if __name__ == "__main__":
    main()
