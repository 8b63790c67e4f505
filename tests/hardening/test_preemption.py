"""SIGTERM (preemption) and SIGINT (Ctrl-C) save a checkpoint of the step reached and exit cleanly
(``128 + signal``, no traceback); the same command resumes and ends with the losses of an
uninterrupted run."""
import pathlib
import signal
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "training"))
from train_helpers import ROOT, read_metrics, run_train, subprocess_env, train_command  # noqa: E402


def _stop_at(cmd, workdir, sig, min_step):
    """Start ``cmd``, send ``sig`` once metrics reach ``min_step``; (returncode, stdout, stderr)."""
    p = subprocess.Popen(cmd, env=subprocess_env(1), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline:
        if metrics.exists() and any(f'"step": {min_step},' in ln for ln in metrics.read_text().splitlines()):
            break
        time.sleep(0.05)
    p.send_signal(sig)
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


def test_sigint_and_sigterm_save_and_resume(tmp_path):
    over = {"total_steps": 8, "checkpoint.every": 100, "compilation_cache": str(tmp_path / "cache")}
    run_train(tmp_path / "ref", over)
    ref = read_metrics(tmp_path / "ref")
    run = tmp_path / "run"
    cmd = train_command(run, {**over, "debug.step_sleep": 0.4})
    seen = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        rc, out, err = _stop_at(cmd, run, sig, (max(seen) if seen else 0) + 1)
        assert rc == 128 + sig, (rc, out[-2000:], err[-3000:])
        assert "Traceback" not in err, err[-3000:]
        assert f"stopped by {sig.name}" in out
        steps = sorted(int(d.name) for d in (run / "checkpoints").iterdir() if d.name.isdigit())
        assert steps and steps[-1] < 8 and (not seen or steps[-1] > seen[-1]), steps
        seen.append(steps[-1])
    done = subprocess.run(cmd, env=subprocess_env(1), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and f"resumed from {run / 'checkpoints'}/{seen[-1]}" in done.stdout, done.stderr[-3000:]
    m = read_metrics(run)
    assert sorted(m) == list(range(1, 9))
    for s in range(1, 9):
        assert m[s]["loss"] == ref[s]["loss"], (s, m[s]["loss"], ref[s]["loss"])


def test_tokenizer_trainer_sigterm_saves_and_resumes(tmp_path):
    """The tokenizer trainer runs through the same loop: SIGTERM saves the step reached, exits with
    ``128 + SIGTERM`` without exporting, and the same command resumes from that step and exports."""
    run = tmp_path / "tok"
    cmd = [sys.executable, "-m", "infinity_jax.train_tokenizer",
           "--config=configs/tokenizer.py:preset=shapes,runlocal=True", f"--workdir={run}", "--config.total_steps=400", "--config.checkpoint.every=100",
           "--config.log.tensorboard=False", "--config.eval.num_images=0"]
    rc, out, err = _stop_at(cmd, run, signal.SIGTERM, 2)
    assert rc == 128 + signal.SIGTERM, (rc, out[-2000:], err[-3000:])
    assert "Traceback" not in err and "stopped by SIGTERM" in out, err[-3000:]
    steps = sorted(int(d.name) for d in (run / "checkpoints").iterdir() if d.name.isdigit())
    assert len(steps) == 1 and 2 <= steps[0] < 400, steps
    assert not (run / "tokenizer.safetensors").exists()
    resume = [a if not a.startswith("--config.total_steps") else f"--config.total_steps={steps[0] + 2}" for a in cmd]
    done = subprocess.run(resume, env=subprocess_env(1), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints'}/{steps[0]}" in done.stdout
    assert (run / "tokenizer.safetensors").is_file()
    assert sorted(read_metrics(run)) == list(range(1, steps[0] + 3))
