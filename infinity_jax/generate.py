r"""Generate images from text with an infinity-jax checkpoint.

  python -m infinity_jax.generate --ckpt ckpt/infinity-2b --prompt "an astronaut riding a horse" \
      --aspect 16:9 --resolution 1M --cfg 3 --tau 0.5 --seed 1 --out out/astronaut.png
  python -m infinity_jax.generate --ckpt ckpt --prompts_file prompts.txt --batch 4 --save_scales --out out/

``--aspect`` is width:height (16:9) or h/w (0.5625); ``--resolution`` is 0.06M, 0.25M, 0.60M, 1M
or a square side (256, 512, 768, 1024). Without a text encoder in the checkpoint, give
precomputed caption features with ``--text_features FILE.npz`` (arrays ``features``, ``mask``).
"""
from __future__ import annotations

import logging
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time
import zipfile

from absl import app, flags

_CKPT = flags.DEFINE_string("ckpt", None, "Checkpoint folder (from infinity_jax.convert or the trainer).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "Text file with one prompt per line.")
_TEXT_FEATURES = flags.DEFINE_string("text_features", None, ".npz with precomputed 'features' (B,T,C) and 'mask' (B,T).")
_NEGATIVE = flags.DEFINE_string("negative_prompt", None, "Negative prompt (replaces the learned null condition).")
_ASPECT = flags.DEFINE_string("aspect", "1:1", "Aspect ratio, width:height (16:9) or h/w (0.5625).")
_RES = flags.DEFINE_string("resolution", None, "0.06M, 0.25M, 0.60M, 1M, or 256/512/768/1024 (default: the checkpoint's).")
_CFG = flags.DEFINE_string("cfg", None, "Guidance scale, or a comma list with one value per scale.")
_TAU = flags.DEFINE_float("tau", None, "Temperature.")
_TOPK = flags.DEFINE_integer("top_k", None, "Top-k per bit (1 = greedy).")
_TOPP = flags.DEFINE_float("top_p", None, "Top-p per bit (0 = off).")
_CFG_LAYER = flags.DEFINE_integer("cfg_insertion_layer", None, "Where guidance applies: 0 = on the logits "
                                  "(default), -n = on the hidden states after block depth-n (1 <= n < depth).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the first image; image i uses seed + i.")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per sampling call.")
_OUT = flags.DEFINE_string("out", "out", "Output image file (one image; .png/.jpg/.webp/... names the format) "
                           "or folder (NNNN.png).")
_SAVE_SCALES = flags.DEFINE_bool("save_scales", False, "Also save the decoded image after every scale as a strip.")
_TRUST_PICKLE = flags.DEFINE_bool("trust_pickle", False, "Unpickle any object in a .bin text encoder (can run code: "
                                  "trusted files only). Default: tensors only.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype of the transformer blocks.")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", None, ["float32", "bfloat16"],
                                 "Storage dtype of the transformer blocks' and the text encoder's parameters "
                                 "(default float32; bfloat16 halves their memory, as the official inference).")


#: ``--out`` suffixes that name one image file (the suffix gives the format); anything else is a folder.
IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                  ".tif": "TIFF", ".tiff": "TIFF"}
MAX_SEED = 2 ** 32 - 1


def read_prompts(prompt_flags, prompts_file) -> list[str]:
    prompts = list(prompt_flags)
    for i, p in enumerate(prompts):
        if not p.strip():
            raise ValueError(f"--prompt number {i + 1} is empty")
    if prompts_file:
        path = pathlib.Path(prompts_file)
        if not path.exists():
            raise ValueError(f"prompts file {path} does not exist")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if not lines:
            raise ValueError(f"prompts file {path} has no prompts")
        prompts += lines
    return prompts


def parse_cfg(value: str | None) -> float | list[float] | None:
    """``--cfg``: one number or a comma list (one per scale), each finite and >= 0."""
    if not value:
        return None
    try:
        vals = [float(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(f"--cfg must be a number or a comma list of numbers, got {value!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in vals):
        raise ValueError(f"--cfg must be >= 0 (1 = no guidance), got {value!r}")
    return vals[0] if len(vals) == 1 else vals


def check_sampling_flags(batch: int, tau, top_k, top_p, seed: int) -> None:
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    if tau is not None and not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"--tau must be > 0, got {tau}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"--top_k must be >= 0 (0 = off, 1 = greedy), got {top_k}")
    if top_p is not None and not 0 <= top_p <= 1:
        raise ValueError(f"--top_p must be in [0, 1] (0 = off), got {top_p}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"--seed must be in [0, {MAX_SEED}], got {seed}")


def read_text_features(path: str):
    """``(features (B, T, C), mask (B, T) or None)`` from an .npz, with one-line errors."""
    import numpy as np  # noqa: PLC0415

    p = pathlib.Path(path)
    if not p.is_file():
        raise ValueError(f"--text_features {p} does not exist")
    try:
        data = np.load(p)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"--text_features: cannot read {p} as an .npz with 'features' and 'mask' ({e})") from None
    with data:
        if "features" not in data.files:
            raise ValueError(f"--text_features {p} has no array 'features' (it has {data.files})")
        feats = np.asarray(data["features"])
        mask = np.asarray(data["mask"]) if "mask" in data.files else None
    if feats.ndim != 3 or not np.issubdtype(feats.dtype, np.floating) or feats.shape[0] < 1:
        raise ValueError(f"--text_features {p}: 'features' must be float (B, T, C), got {feats.dtype} {feats.shape}")
    if not np.isfinite(feats).all():
        raise ValueError(f"--text_features {p}: 'features' has non-finite values")
    if mask is not None and mask.shape != feats.shape[:2]:
        raise ValueError(f"--text_features {p}: 'mask' has shape {mask.shape}, expected {feats.shape[:2]}")
    return feats, mask


def output_plan(out: str, n: int) -> tuple[pathlib.Path, str | None]:
    """``(path, format)``: one image file when ``out`` has an image suffix, else a folder (format None).

    Checks that the target can be written before anything is loaded (a folder created for the
    check is removed again: a run that fails later leaves nothing behind).
    """
    path = pathlib.Path(out)
    fmt = IMAGE_SUFFIXES.get(path.suffix.lower())
    if fmt is not None and n != 1:
        raise ValueError(f"--out {path} names one file but there are {n} images; give a folder")
    folder = (path.parent if fmt else path).absolute()
    created = next((p for p in [*reversed(folder.parents), folder] if not p.exists()), None)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"cannot write to --out {path}: {e.strerror or e}") from None
    finally:
        if created is not None and created.is_dir():
            shutil.rmtree(created, ignore_errors=True)
    return path, fmt


def main(argv):
    del argv
    # deferred so that --help and flag errors need no jax (0.2 s instead of 7 s)
    from infinity_jax import schedules  # noqa: PLC0415
    from infinity_jax.bundle import BundleError  # noqa: PLC0415
    from infinity_jax.state_dict import (  # noqa: PLC0415
        TRUST_PICKLE_ENV, CheckpointMismatchError, DamagedCheckpointError, UnsafeCheckpointError)

    if not _CKPT.value:
        sys.exit("error: --ckpt is required")
    feats = mask = None
    try:  # every flag is checked before anything heavy is loaded
        prompts = read_prompts(_PROMPT.value, _PROMPTS_FILE.value)
        if not prompts and not _TEXT_FEATURES.value:
            sys.exit("error: give --prompt, --prompts_file or --text_features")
        if _TEXT_FEATURES.value:
            feats, mask = read_text_features(_TEXT_FEATURES.value)
            prompts = [f"features[{i}]" for i in range(feats.shape[0])]
        cfg = parse_cfg(_CFG.value)
        check_sampling_flags(_BATCH.value, _TAU.value, _TOPK.value, _TOPP.value, _SEED.value)
        if _SEED.value + len(prompts) - 1 > MAX_SEED:
            raise ValueError(f"--seed {_SEED.value} + {len(prompts)} images passes {MAX_SEED}")
        schedules.parse_aspect_ratio(_ASPECT.value)
        if _RES.value and not _RES.value.isdigit() and _RES.value not in schedules.PN_TO_NUM_SCALES:
            raise schedules.ScheduleError(f"unknown resolution {_RES.value!r}; choose one of "
                                          f"{', '.join(schedules.PN_TO_NUM_SCALES)} or 256/512/768/1024")
        out, fmt = output_plan(_OUT.value, len(prompts))
    except (ValueError, schedules.ScheduleError) as e:
        sys.exit(f"error: {e}")

    from tqdm import tqdm  # noqa: PLC0415

    from infinity_jax.sampling.pipeline import Pipeline, PromptError, strip  # noqa: PLC0415

    if _TRUST_PICKLE.value:  # read by state_dict for the text encoder's pytorch_model.bin
        os.environ[TRUST_PICKLE_ENV] = "1"
    t0 = time.perf_counter()
    absl_log = logging.getLogger("absl")  # Orbax's log lines (and the traceback of a failed read)
    level = absl_log.level
    absl_log.setLevel(logging.CRITICAL)
    try:
        pipe = Pipeline.from_checkpoint(_CKPT.value, dtype=_DTYPE.value, param_dtype=_PARAM_DTYPE.value)
    except (BundleError, CheckpointMismatchError, UnsafeCheckpointError, DamagedCheckpointError) as e:
        # reads of a damaged checkpoint may still be in flight on Orbax's threads: leave without
        # running interpreter shutdown, which would print their 'event loop is closed' errors
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    absl_log.setLevel(level)
    print(f"loaded {_CKPT.value} in {time.perf_counter() - t0:.1f} s")
    try:
        pipe.sampling_config(cfg_insertion_layer=_CFG_LAYER.value)
    except ValueError as e:
        sys.exit(f"error: {e}")
    width = pipe.transformer.cfg.text_channels
    if feats is not None and feats.shape[-1] != width:
        sys.exit(f"error: --text_features {_TEXT_FEATURES.value}: text features have width {feats.shape[-1]}, "
                 f"this checkpoint's transformer expects {width}")
    try:
        sched = pipe.schedule_for(_ASPECT.value, _RES.value)
    except schedules.ScheduleError as e:
        sys.exit(f"error: {e}\nsupported templates (h/w): {', '.join(str(t) for t in schedules.H_DIV_W_TEMPLATES)}")
    n = len(prompts)
    bar = tqdm(total=n * len(sched), desc="sampling", unit="scale", disable=None)
    times = []
    for start in range(0, n, _BATCH.value):
        idx = list(range(start, min(n, start + _BATCH.value)))
        kw = dict(aspect=_ASPECT.value, resolution=_RES.value, cfg=cfg, tau=_TAU.value, top_k=_TOPK.value,
                  top_p=_TOPP.value, cfg_insertion_layer=_CFG_LAYER.value, seed=_SEED.value + start, save_scales=_SAVE_SCALES.value,
                  negative_prompt=_NEGATIVE.value, progress=lambda k, K: bar.update(len(idx)))
        try:
            if feats is not None:
                res = pipe(text_features=feats[idx], text_mask=None if mask is None else mask[idx], **kw)
            else:
                res = pipe([prompts[i] for i in idx], **kw)
        except (PromptError, ValueError) as e:
            sys.exit(f"error: {e}")
        times.append((res.seconds, res.compile_seconds, len(idx)))
        (out.parent if fmt else out).mkdir(parents=True, exist_ok=True)  # only once there is an image
        for j, i in enumerate(idx):
            path = out if fmt else out / f"{i:04d}.png"
            res.images[j].save(path, format=fmt or "PNG")
            if res.previews is not None:
                strip(res.previews[j]).save(path.with_name(path.stem + "_scales.png"))
            bar.write(f"{path}  <- {prompts[i]!r}")
    bar.close()
    warm = [(s, b) for s, c, b in times if c == 0]
    h, w = sched[-1][-2:]
    msg = f"{n} image(s), {len(sched)} scales, token grid {h}x{w}"
    if warm:
        msg += f"; {sum(s for s, _ in warm) / sum(b for _, b in warm):.3f} s per image after compilation"
    print(msg)


def run() -> None:
    """The ``infinity-generate`` console script."""
    app.run(main)


if __name__ == "__main__":
    run()
