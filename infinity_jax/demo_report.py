"""The demo's outputs: the coarse-to-fine figure, ``results/report.md`` and the TensorBoard summary."""
from __future__ import annotations

import os
import pathlib

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from infinity_jax.eval.prefix_replay import markdown


def coarse_to_fine_figure(strips: list, captions: list, schedule, path: pathlib.Path) -> None:
    """Stack the preview strips (one per prompt) under a header naming the token grid of each column."""
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    ims = [Image.open(p).convert("RGB") for p in strips]
    n_cols = len(schedule) + 1
    cell = (ims[0].width + 2) // n_cols
    label_w, head = 260, 22
    out = Image.new("RGB", (label_w + ims[0].width, head + sum(im.height + 6 for im in ims)), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for k, (h, w) in enumerate(tuple(s) for s in schedule):
        draw.text((label_w + k * cell + 4, 4), f"after {h}x{w}", fill=(0, 0, 0), font=font)
    draw.text((label_w + len(schedule) * cell + 4, 4), "image", fill=(0, 0, 0), font=font)
    y = head
    for im, cap in zip(ims, captions):
        out.paste(im, (label_w, y))
        words, line, lines = cap.split(), "", []
        for wd in words:
            trial = f"{line} {wd}".strip()
            if draw.textlength(trial, font=font) > label_w - 12 and line:
                lines.append(line)
                line = wd
            else:
                line = trial
        lines.append(line)
        for j, ln in enumerate(lines):
            draw.text((6, y + im.height // 2 - 8 * len(lines) + 16 * j), ln, fill=(0, 0, 0), font=font)
        y += im.height + 6
    out.save(path)


def write_report(config, workdir: pathlib.Path, info: dict, total_seconds: float) -> str:
    """``WORKDIR/results/report.md`` from the stages' results ``info`` (``{stage: info}``, in stage order)."""
    res = workdir / "results"
    tok, txt, inf, gen = (info.get(s, {}) for s in ("tokenizer", "text", "infinity", "generate"))
    lines = ["# infinity-jax embedded demo", "",
             f"Mode: {'quick' if config.quick else 'default'}; devices: {jax.device_count()} x "
             f"{jax.devices()[0].device_kind}; CPU cores: {os.cpu_count()}.", "",
             "| stage | wall time |", "|---|---:|"]
    lines += [f"| {s} | {v['seconds']:.0f} s |" for s, v in info.items()]
    lines += [f"| **total** | **{total_seconds:.0f} s ({total_seconds / 60:.1f} min)** |", ""]
    if tok:
        lines += [f"Tokenizer (BSQ-VAE, d={config.tokenizer.model.codebook_dim}, patch {config.tokenizer.model.patch_size},"
                  f" {tok['steps']} steps): held-out reconstruction PSNR **{tok['psnr_heldout']:.2f} dB** on "
                  f"{tok['images']} true renders of the held-out prompts; the evaluator scores the reconstructions "
                  f"{tok['recon_eval_overall']:.3f} overall (true renders: {tok['true_render_eval_overall']:.3f}).", ""]
    if txt:
        pre = txt.get("pretrain")
        how = (f"trained {pre['steps']} steps by masked-token denoising"
               + (" (kept tokens reconstructed too)" if pre.get("keep_weight") else "")
               + " on the training captions (masked-word "
               f"accuracy on the held-out prompts {pre['heldout_accuracy_before']:.2f} -> "
               f"{pre['heldout_accuracy_after']:.2f}), then frozen" if pre else "randomly initialised and frozen")
        lines += [f"Text: SentencePiece ({txt.get('pieces')} pieces) on {txt['captions']} training captions; tiny T5 "
                  f"encoder (d_model {txt['t5']['d_model']}, {txt['t5']['num_layers']} layers"
                  + (f", {txt['t5']['absolute_positions']} learned positions" if txt["t5"].get("absolute_positions")
                     else "") + f"), {how}.", ""]
    if inf:
        lines += [f"Infinity: {inf['params']:,} parameters, {inf['steps']} steps of batch {inf['batch_size']} with "
                  f"Bitwise Self-Correction; last loss {inf.get('last_loss', float('nan')):.4f}, bit accuracy "
                  f"{inf.get('last_bit_accuracy', float('nan')):.4f}.", ""]
    if gen:
        lines += [f"Generation: {gen['images']} images ({len(gen['seeds'])} per held-out prompt), "
                  f"{gen['generation_seconds']:.0f} s; sampling cfg {config.generate.cfg}, tau {config.generate.tau}.", "",
                  "| category | accuracy | prompts |", "|---|---:|---:|"]
        lines += [f"| {c} | {v:.3f} | {gen['counts'][c] // len(gen['seeds'])} |" for c, v in gen["per_category"].items()]
        lines += [f"| **overall** | **{gen['overall']:.3f}** | |", "",
                  f"Pictures: `{os.path.relpath(gen['grid'], workdir)}` (held-out grid), "
                  + ", ".join(f"`{os.path.relpath(p, workdir)}`" for p in gen["previews"])
                  + " (progressive previews), `results/tokenizer_recon.png` (tokenizer: top true, bottom reconstructed).",
                  "", "Scores per image: `results/shapes_eval.json`, failures: `results/shapes_eval.md`.", ""]
        if gen.get("prefix_replay"):
            lines += ["Where the prompt is lost: the first k scales replayed from the true render of each held-out "
                      "prompt (seed 0), the rest sampled (`results/prefix_replay.json`):", "",
                      markdown(gen["prefix_replay"], config.schedule), ""]
    text = "\n".join(lines)
    (res / "report.md").write_text(text)
    return text


def write_tensorboard(workdir: pathlib.Path, info: dict) -> None:
    """The demo's summary (held-out PSNR, scores, the held-out grid, stage times) in ``WORKDIR/tensorboard``."""
    try:
        from tensorboardX import SummaryWriter  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return
    w = SummaryWriter(str(workdir / "tensorboard"))
    if "tokenizer" in info:
        w.add_scalar("demo/tokenizer_psnr_heldout", info["tokenizer"]["psnr_heldout"], 0)
    if "generate" in info:
        g = info["generate"]
        w.add_scalar("demo/overall", g["overall"], 0)
        for c, v in g["per_category"].items():
            w.add_scalar(f"demo/{c}", v, 0)
        grid = np.asarray(Image.open(g["grid"]).convert("RGB"))
        w.add_image("demo/heldout_grid", grid, 0, dataformats="HWC")
    for s, v in info.items():
        w.add_scalar(f"demo/seconds_{s}", v["seconds"], 0)
    w.close()
