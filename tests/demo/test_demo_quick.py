"""``python -m infinity_jax.demo --quick`` end to end: every stage, the files it writes, a valid score,
then a second invocation that resumes (every stage already done) and a generate run on its bundle."""
import json
import math
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = dict(os.environ)
    # one CPU device, as on a laptop (the test session simulates 8)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("INFINITY_JAX_DISTRIBUTED", None)
    return env


def _run(args, timeout):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc, dt


def _reconstruction_score(work, cfg) -> float:
    """The evaluator on the bundle tokenizer's reconstructions of the held-out true renders (seed 0)."""
    from infinity_jax.eval import shapes_eval as E
    from infinity_jax.sampling.pipeline import Pipeline
    from infinity_jax.schedules import tokenizer_schedule
    from infinity_jax.tokenizer.pixels import from_uint8, to_uint8

    pipe = Pipeline.from_checkpoint(work / "bundle")
    imgs, specs = E.render_heldout(cfg["image_size"], [0], cfg["data"]["style"], cfg["data"]["backgrounds"])
    grids = tokenizer_schedule(pipe.schedule_for(1.0), pipe.transformer.cfg.apply_spatial_patchify)
    rec = pipe.tokenizer(from_uint8(imgs), schedule=grids)
    return E.evaluate(to_uint8(rec), specs)["overall"]


def test_demo_quick_end_to_end(tmp_path):
    work = tmp_path / "demo"
    proc, seconds = _run(["-m", "infinity_jax.demo", "--workdir", str(work), "--quick"], timeout=900)
    out = proc.stdout
    assert "# infinity-jax embedded demo" in out and "overall" in out
    # the files it writes
    for rel in ("tokenizer/tokenizer.safetensors", "tokenizer/tokenizer_config.json", "tokenizer/metrics.jsonl",
                "text_encoder/spiece.model", "text_encoder/config.json", "infinity/metrics.jsonl",
                "bundle/infinity_config.json", "results/heldout_grid.png", "results/tokenizer_recon.png",
                "results/scores.json", "results/report.md", "results/shapes_eval.json", "results/shapes_eval.md",
                "demo_config.json"):
        assert (work / rel).is_file(), rel
    for rel in ("tokenizer/tensorboard", "infinity/tensorboard", "tensorboard", "tokenizer/checkpoints",
                "infinity/checkpoints", "bundle/transformer", "bundle/tokenizer", "bundle/text_encoder"):
        assert (work / rel).is_dir(), rel
    previews = sorted((work / "results" / "previews").glob("*.png"))
    assert previews
    for stage in ("tokenizer", "text", "infinity", "generate"):
        assert (work / "stages" / f"{stage}.json").is_file()
    scores = json.loads((work / "results" / "scores.json").read_text())
    s = scores["summary"]
    assert isinstance(s["overall"], float) and 0.0 <= s["overall"] <= 1.0 and math.isfinite(s["overall"])
    assert set(s["per_category"]) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert all(0.0 <= v <= 1.0 for v in s["per_category"].values())
    assert math.isfinite(s["tokenizer_psnr_heldout"]) and s["tokenizer_psnr_heldout"] > 5.0
    assert s["total_seconds"] > 0
    ev = json.loads((work / "results" / "shapes_eval.json").read_text())
    assert len(ev["per_image"]) == 86 and ev["overall"] == pytest.approx(s["overall"])
    report = (work / "results" / "report.md").read_text()
    assert "PSNR" in report and "overall" in report
    # prefix replay: k = 0 .. K scales from the true renders; k = K is the tokenizer's reconstruction
    rows = json.loads((work / "results" / "prefix_replay.json").read_text())
    cfg = json.loads((work / "demo_config.json").read_text())
    assert [r["replayed_scales"] for r in rows] == list(range(len(cfg["schedule"]) + 1))
    assert all(0.0 <= r["overall"] <= 1.0 for r in rows) and "replayed from the true render" in report
    assert rows[-1]["overall"] == pytest.approx(_reconstruction_score(work, cfg), abs=0.1)
    # the text encoder the bundle ships is the demo's: learned positions, kept tokens reconstructed
    for folder in ("text_encoder", "bundle/text_encoder"):
        t5 = json.loads((work / folder / "config.json").read_text())
        assert t5["absolute_positions"] == cfg["text"]["t5"]["absolute_positions"] > 0, folder
    pre = json.loads((work / "text_encoder" / "pretrain.json").read_text())
    assert pre["keep_weight"] == cfg["text"]["pretrain"]["keep_weight"] > 0
    print(f"quick demo: {seconds:.0f} s wall, overall {s['overall']:.3f}, PSNR {s['tokenizer_psnr_heldout']:.2f} dB")

    # a second run resumes: every stage is skipped, the report is written again
    proc2, seconds2 = _run(["-m", "infinity_jax.demo", "--workdir", str(work), "--quick"], timeout=300)
    assert proc2.stdout.count("skipped") >= 4
    assert json.loads((work / "results" / "scores.json").read_text())["summary"]["overall"] == s["overall"]

    # the bundle works with the generate command
    png = tmp_path / "gen.png"
    _run(["-m", "infinity_jax.generate", "--ckpt", str(work / "bundle"), "--prompt", "a red circle",
          "--out", str(png), "--save_scales"], timeout=300)
    assert png.is_file() and (tmp_path / "gen_scales.png").is_file()


def test_demo_resumes_after_a_stopped_stage(tmp_path):
    """--stop_after leaves later stages undone; the next run does only those."""
    work = tmp_path / "demo"
    proc, _ = _run(["-m", "infinity_jax.demo", "--workdir", str(work), "--quick", "--stop_after", "text",
                    "--config.tokenizer.total_steps=4", "--config.tokenizer.eval.every=4"], timeout=600)
    assert (work / "stages" / "tokenizer.json").is_file() and (work / "stages" / "text.json").is_file()
    assert not (work / "stages" / "infinity.json").exists()
    tok = json.loads((work / "stages" / "tokenizer.json").read_text())
    assert tok["steps"] == 4


def test_demo_user_mistakes_get_one_line_errors(tmp_path):
    """A missing config file or an unknown override is a usage error, not a traceback."""
    for args, needle in ((["--config", str(tmp_path / "nope.py")], "not found"),
                         (["--config.infinity.no_such_field=3"], "config.infinity.no_such_field: no such key"),
                         ([], "--workdir is required")):
        cmd = [sys.executable, "-m", "infinity_jax.demo", *args]
        if "--workdir" not in needle:
            cmd += ["--workdir", str(tmp_path / "w")]
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        assert needle in proc.stderr + proc.stdout, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
