r"""The embedded default: a text-to-image model trained and measured on a laptop CPU, from nothing.

  python -m infinity_jax.demo --workdir /tmp/demo           # the default run
  python -m infinity_jax.demo --workdir /tmp/demo_q --quick # a few minutes (CI)

Stages (each one resumes if the run is interrupted; a finished stage is skipped):

1. ``tokenizer``: a BSQ-VAE (32x32 images, patch 2, d=16) trained on the synthetic ``shapes``
   data with the BSQ losses (:mod:`infinity_jax.training.tokenizer_trainer`); its held-out PSNR is
   measured on true renders of the held-out prompts;
2. ``text``: a SentencePiece model trained on the training captions and a tiny T5 encoder
   (with learned absolute positions) trained on them by masked-token denoising
   (:mod:`infinity_jax.training.text_pretrain`; no pretrained weights exist here), then frozen as
   Infinity's Flan-T5 is;
3. ``infinity``: a tiny Infinity trained by the main trainer with Bitwise Self-Correction on the
   shapes captions, then written as an inference bundle (``python -m infinity_jax.generate --ckpt
   WORKDIR/bundle`` works on it);
4. ``generate``: the held-out prompts (captions never emitted in training) are generated, progressive previews
   of a few are drawn, the shapes evaluator scores the images, and the pictures, scores and a
   report are written.

Outputs in ``WORKDIR``: ``tokenizer/`` (checkpoints, ``tokenizer.safetensors``, TensorBoard),
``text_encoder/``, ``infinity/`` (checkpoints, TensorBoard), ``bundle/``, ``results/``
(``heldout_grid.png``, ``previews/*.png``, ``tokenizer_recon.png``, ``scores.json``,
``shapes_eval.{json,md}``, ``report.md``), ``tensorboard/`` (the demo's summary) and ``stages/``.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import time

import jax
import numpy as np
import sentencepiece as spm
from absl import app, flags
from absl import logging as absl_logging
from PIL import Image
from tqdm import tqdm

from infinity_jax import bundle, config_files
from infinity_jax.data import shapes as S
from infinity_jax.data.shapes import caption_stream, heldout_prompts
from infinity_jax.demo_report import coarse_to_fine_figure, write_report, write_tensorboard
from infinity_jax.eval import prefix_replay as PR
from infinity_jax.eval import shapes_eval as E
from infinity_jax.sampling.pipeline import Pipeline, strip
from infinity_jax.text.config import T5Config
from infinity_jax.text.sentencepiece import T5Tokenizer
from infinity_jax.tokenizer import VAEConfig
from infinity_jax.tokenizer import load as load_vae
from infinity_jax.tools.train_sentencepiece import build_tiny_t5, train_sentencepiece
from infinity_jax.training import tokenizer_losses as TL
from infinity_jax.training.text_pretrain import pretrain_encoder
from infinity_jax.training.tokenizer_trainer import TokenizerTrainer
from infinity_jax.training.trainer import Trainer

STAGES = ("tokenizer", "text", "infinity", "generate")


# ------------------------------------------------------------------------------------- config --

def default_config_path() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py"


def load_config(spec: str | None, quick: bool, overrides=()):
    """``path[:args]`` (default ``configs/demo.py``) with ``--config.a.b=v`` ``overrides`` -> ConfigDict;
    ``quick`` appends ``quick=True`` to the args."""
    path, _, arg = (spec or str(default_config_path())).partition(":")
    if quick:
        arg = ",".join(filter(None, [arg, "quick=True"]))
    return config_files.load(f"{path}:{arg}" if arg else path, overrides)


# ------------------------------------------------------------------------------------- stages --

class Stages:
    """Stage markers ``WORKDIR/stages/NAME.json`` (results and wall time of finished stages)."""
    def __init__(self, workdir: pathlib.Path):
        self.dir = workdir / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)

    def done(self, name: str) -> dict | None:
        p = self.dir / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None

    def mark(self, name: str, info: dict) -> None:
        p = self.dir / f"{name}.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, p)

    def attempt_time(self, name: str) -> float:
        """Seconds spent in earlier, interrupted attempts of a stage."""
        p = self.dir / f"{name}.partial"
        return float(p.read_text()) if p.exists() else 0.0

    def add_attempt_time(self, name: str, seconds: float) -> None:
        p = self.dir / f"{name}.partial"
        p.write_text(str(self.attempt_time(name) + seconds))


def _fail(msg: str) -> None:
    """A user mistake: one line on stderr, exit status 2 (no traceback, no usage dump)."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _exit_if_stopped(trainer) -> None:
    """SIGTERM / SIGINT stopped a training stage (its checkpoint is saved): exit with ``128 + signal``."""
    if trainer.stopped_by:
        _say("stopped; the checkpoint is saved, run the same command to resume")
        sys.exit(128 + int(trainer.stopped_by))


def stage_tokenizer(config, workdir: pathlib.Path) -> dict:
    out = workdir / "tokenizer"
    trainer = TokenizerTrainer(config.tokenizer, str(out))
    last = trainer.train()
    _exit_if_stopped(trainer)
    imgs, specs = E.render_heldout(int(config.image_size), range(int(config.eval.tokenizer_images_seeds)),
                                   str(config.data.style), tuple(config.data.backgrounds))
    rec = trainer.reconstruct(trainer.final_params(), imgs)
    psnr = TL.psnr_uint8(imgs, rec)
    res = E.evaluate(rec, specs)
    res_true = E.evaluate(imgs, specs)
    results = workdir / "results"
    results.mkdir(parents=True, exist_ok=True)
    n = min(16, len(imgs))
    Image.fromarray(np.concatenate([np.concatenate(list(imgs[:n]), 1), np.concatenate(list(rec[:n]), 1)], 0)).resize(
        (n * 128, 256), Image.NEAREST).save(results / "tokenizer_recon.png")
    return {"psnr_heldout": psnr, "psnr_train_last": last.get("psnr"), "steps": int(config.tokenizer.total_steps),
            "recon_eval_overall": res["overall"], "recon_eval_per_category": res["per_category"],
            "true_render_eval_overall": res_true["overall"], "images": len(imgs),
            "checkpoint": str(out / "tokenizer.safetensors")}


def stage_text(config, workdir: pathlib.Path) -> dict:
    t = config.text
    corpus = list(caption_stream(seed=int(config.infinity.data.factory_kwargs.seed), start=0, stop=int(t.num_captions)))
    # SentencePiece's unigram trainer splits the words of this tiny-vocabulary corpus into letters;
    # adding every distinct training word as a line of its own gives one piece per word (plurals
    # become word + "s"). Only training captions are used: no held-out prompt is ever seen.
    words = sorted({w for c in corpus for w in c.split()})
    sp = train_sentencepiece(corpus + words * int(t.word_lines), int(t.vocab_size))
    folder = workdir / "text_encoder"
    cfg = T5Config(**dict(t.t5))
    build_tiny_t5(folder, spiece_model=sp, config=cfg, seed=int(t.seed))
    tok = T5Tokenizer.from_folder(folder)
    lens = tok(corpus[:2000], max_length=None).lens
    proc = spm.SentencePieceProcessor(model_proto=sp)
    p = t.pretrain
    pre = None
    if int(p.steps) > 0:  # masked-token denoising on the training captions (held-out ones: measured only)
        held = [c for c, _, _ in heldout_prompts()]
        pre = pretrain_encoder(folder, corpus, heldout=held, steps=int(p.steps), batch_size=int(p.batch_size),
                               mask_rate=float(p.mask_rate), keep_weight=float(p.get("keep_weight", 0.0)),
                               lr=float(p.lr), max_len=int(t.max_len), seed=int(t.seed))
    return {"folder": str(folder), "pieces": int(proc.get_piece_size()), "words": len(words),
            "example": proc.encode(corpus[4], out_type=str), "captions": len(corpus), "max_tokens": int(lens.max()),
            "mean_tokens": float(lens.mean()), "t5": dict(t.t5), "pretrain": pre}


def infinity_config(config, workdir: pathlib.Path):
    i = config.infinity.copy_and_resolve_references()
    i.unlock()
    i.tokenizer.checkpoint = str(workdir / "tokenizer" / "tokenizer.safetensors")
    i.text.t5_path = str(workdir / "text_encoder")
    i.lock()
    return i


def stage_infinity(config, workdir: pathlib.Path) -> dict:
    cfg = infinity_config(config, workdir)
    trainer = Trainer(cfg, str(workdir / "infinity"))
    last = trainer.train()
    _exit_if_stopped(trainer)
    state = trainer.state
    params = state["ema"] if "ema" in state else state["params"]
    transformer = trainer.md.merge(jax.device_get(params))
    tcfg = json.loads((workdir / "tokenizer" / "tokenizer_config.json").read_text())
    vcfg = VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in tcfg["vae"].items()})
    tokenizer = load_vae(workdir / "tokenizer" / "tokenizer.safetensors", vcfg)
    g = config.generate
    sampling = {"schedules": {"1.0": [[1, int(h), int(w)] for h, w in config.schedule]}, "cfg": float(g.cfg),
                "tau": float(g.tau), "top_k": int(g.top_k), "top_p": float(g.top_p)}
    bundle.save(workdir / "bundle", transformer, tokenizer, text_encoder_folder=workdir / "text_encoder",
                sampling=sampling, extra={"demo": {"image_size": int(config.image_size)}})
    keep = ("loss", "bit_accuracy", "token_accuracy", "step", "images_per_s")
    return {"steps": int(cfg.total_steps), "batch_size": int(cfg.batch_size),
            **{f"last_{k}": last.get(k) for k in keep if k in last},
            "params": int(sum(x.size for x in jax.tree.leaves(params))), "bundle": str(workdir / "bundle")}


def stage_generate(config, workdir: pathlib.Path) -> dict:
    results = workdir / "results"
    (results / "previews").mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.from_checkpoint(workdir / "bundle")
    prompts = S.heldout_prompts()
    captions = [p[0] for p in prompts]
    specs = [p[1] for p in prompts]
    seeds = [int(s) for s in config.eval.seeds]
    g = config.generate
    B = int(g.batch)
    n_prev = int(config.eval.previews)
    images = np.zeros((len(seeds), len(prompts), int(config.image_size), int(config.image_size), 3), np.uint8)
    preview_paths, preview_caps = [], []
    # previews: the first prompt of a few categories
    prev_idx = []
    for cat in S.CATEGORIES:
        j = next((k for k, p in enumerate(prompts) if p[2] == cat), None)
        if j is not None and len(prev_idx) < n_prev:
            prev_idx.append(j)
    t0 = time.perf_counter()
    bar = tqdm(total=len(seeds) * len(prompts), desc="generating", unit="img", disable=None, file=sys.stdout)
    for si, seed in enumerate(seeds):
        for start in range(0, len(prompts), B):
            idx = list(range(start, min(len(prompts), start + B)))
            want_prev = si == 0 and any(j in idx for j in prev_idx)
            res = pipe([captions[j] for j in idx], seed=seed * 100_000 + start, save_scales=want_prev)
            for k, j in enumerate(idx):
                images[si, j] = np.asarray(res.images[k])
                if want_prev and j in prev_idx:
                    path = results / "previews" / f"{j:03d}_{S.CATEGORIES.index(prompts[j][2])}_{prompts[j][2]}.png"
                    strip(res.previews[k] + [res.images[k]]).resize(
                        ((len(res.previews[k]) + 1) * 128 + 2 * len(res.previews[k]), 128)).save(path)
                    preview_paths.append(str(path))
                    preview_caps.append(captions[j])
            bar.update(len(idx))
    bar.close()
    gen_seconds = time.perf_counter() - t0
    if preview_paths:
        coarse_to_fine_figure(preview_paths, preview_caps, config.schedule,
                              results / "coarse_to_fine.png")
    flat = images.reshape(-1, *images.shape[2:])
    flat_specs = [specs[j] for _ in seeds for j in range(len(prompts))]
    res = E.evaluate(flat, flat_specs)
    extra = {"seeds": seeds, "sampling": {k: g[k] for k in ("cfg", "tau", "top_k", "top_p")}}
    E.write_report(res, results, "shapes_eval", title="Held-out prompts generated by the demo model", extra=extra)
    header = [f"demo: held-out prompts generated at {config.image_size}x{config.image_size} (seed {seeds[0]}; "
              f"green = pass)", E.summary(res)]
    E._grid_png(images[0], res["per_image"][: len(prompts)], results / "heldout_grid.png", header)
    np.savez_compressed(results / "generated.npz", images=images, captions=np.asarray(captions))
    replay = None
    if config.eval.prefix_replay:  # which scales lose the prompt: replay the first k from the true renders
        true_imgs, true_specs = E.render_heldout(int(config.image_size), [0], str(config.data.style),
                                                 tuple(config.data.backgrounds))
        _say("prefix replay: scoring generation with the first k scales taken from the true renders")
        replay = PR.prefix_replay_scores(pipe, captions, true_specs, true_imgs)
        (results / "prefix_replay.json").write_text(json.dumps(replay, indent=1))
    return {"overall": res["overall"], "prefix_replay": replay, "per_category": res["per_category"],
            "counts": res["counts"],
            "images": int(flat.shape[0]), "seeds": seeds, "generation_seconds": gen_seconds,
            "grid": str(results / "heldout_grid.png"), "previews": preview_paths,
            "coarse_to_fine": str(results / "coarse_to_fine.png") if preview_paths else None}


# --------------------------------------------------------------------------------------- main --

def run(config, workdir: str | os.PathLike, stop_after: str | None = None) -> dict:
    """Run (or resume) every stage; return ``{stage: info}`` (each with ``seconds``)."""
    workdir = pathlib.Path(workdir).expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "demo_config.json").write_text(config.to_json_best_effort(indent=1))
    stages = Stages(workdir)
    fns = {"tokenizer": stage_tokenizer, "text": stage_text, "infinity": stage_infinity, "generate": stage_generate}
    info: dict = {}
    t_all = time.perf_counter()
    for name in STAGES:
        prev = stages.done(name)
        if prev is not None:
            _say(f"stage {name}: done earlier ({prev['seconds']:.0f} s), skipped")
            info[name] = prev
        else:
            _say(f"stage {name}: running")
            t0 = time.perf_counter()
            try:
                out = fns[name](config, workdir)
            except BaseException:
                stages.add_attempt_time(name, time.perf_counter() - t0)
                raise
            out["seconds"] = time.perf_counter() - t0 + stages.attempt_time(name)
            stages.mark(name, out)
            info[name] = out
            _say(f"stage {name}: finished in {out['seconds']:.0f} s")
        if name == stop_after:
            _say(f"stopping after {name} (--stop_after)")
            return info
    total = sum(v["seconds"] for v in info.values())
    report = write_report(config, workdir, info, total)
    write_tensorboard(workdir, info)
    summary = {"total_seconds": total, "wall_seconds_this_run": time.perf_counter() - t_all,
               **{f"{k}_seconds": v["seconds"] for k, v in info.items()},
               "tokenizer_psnr_heldout": info["tokenizer"]["psnr_heldout"],
               "overall": info["generate"]["overall"], "per_category": info["generate"]["per_category"]}
    (workdir / "results" / "scores.json").write_text(json.dumps({"summary": summary, "stages": info}, indent=1))
    print("\n" + report, flush=True)
    return info


def _define_flags() -> None:
    """Flags of the command (defined only when run as a program: tests import this module, and absl
    refuses to define a flag twice)."""
    flags.DEFINE_string("workdir", None, "Output folder (created; a second run resumes).")
    flags.DEFINE_bool("quick", False, "A few-minute run with the same outputs (CI).")
    flags.DEFINE_string("config", None, "Config file[:args] (default: configs/demo.py of this checkout).")
    flags.DEFINE_enum("stop_after", None, list(STAGES), "Stop after this stage (to test resuming).")


def main(argv):
    rest = argv[1:]
    if rest and any(not a.startswith("--config.") for a in rest):
        _fail(f"unexpected arguments: {' '.join(rest)}")
    F = flags.FLAGS
    if not F.workdir:
        _fail("--workdir is required (the folder for every output; a second run resumes)")
    try:
        config = load_config(F.config, F.quick, rest)
    except ValueError as e:  # config_files.ConfigError, or a bad argument of the config file
        _fail(str(e))
    logging.getLogger().setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)
    for noisy in ("absl", "orbax", "jax._src", "grain", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run(config, F.workdir, F.stop_after)


def _flags_parser(args):
    """absl's parser, leaving ``--config.x=y`` overrides for :func:`load_config`."""
    cfg_args = [a for a in args[1:] if a.startswith("--config.")]
    other = [args[0]] + [a for a in args[1:] if not a.startswith("--config.")]
    return flags.FLAGS(other) + cfg_args


def cli() -> None:
    """The ``infinity-demo`` command (same as ``python -m infinity_jax.demo``)."""
    _define_flags()
    app.run(main, flags_parser=_flags_parser)


if __name__ == "__main__":
    cli()
