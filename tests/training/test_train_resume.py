"""Kill the trainer hard after a checkpoint, rerun the same command: it resumes, and the following
losses equal those of an uninterrupted run exactly. The data set has corrupt images, which are
skipped, counted and reported (and the count survives the restart)."""
import math
import signal
import subprocess
import time

from train_helpers import CORRUPT, ROOT, read_metrics, run_train, subprocess_env, train_command


def _overrides(shards, cache):
    return {"data.source": "arrayrecord", "data.path": str(shards), "batch_size": 4, "total_steps": 8,
            "checkpoint.every": 2, "checkpoint.keep": 2, "compilation_cache": cache}


def test_train_resume_after_kill_matches_uninterrupted(tmp_path, corrupt_shards, compile_cache):
    base = _overrides(corrupt_shards, compile_cache)
    ref = run_train(tmp_path / "ref", base)
    ref_m = read_metrics(tmp_path / "ref")
    assert sorted(ref_m) == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) for r in ref_m.values())
    # corrupt images were met, skipped and reported, never fatal
    skipped = ref_m[8]["data/skipped_total"]
    assert skipped > 0
    assert f"{int(skipped)} corrupt or unreadable samples skipped" in ref.stdout

    run = tmp_path / "run"
    cmd = train_command(run, {**base, "debug.step_sleep": 0.5})
    env = subprocess_env(1)
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = run / "checkpoints" / "4"
    deadline = time.time() + 240
    while not ckpt.is_dir() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.is_dir(), "no checkpoint at step 4"
    p.send_signal(signal.SIGKILL)
    out1 = p.communicate()[0]
    assert p.returncode == -signal.SIGKILL, out1[-3000:]
    done_before = read_metrics(run)
    assert max(done_before) < 8, "the run finished before it was killed"

    second = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    assert "resumed from" in second.stdout
    resumed_at = int(second.stdout.split("resumed from", 1)[1].split("/checkpoints/")[1].split(" ")[0])
    assert resumed_at >= 4
    m = read_metrics(run)
    assert sorted(m) == list(range(1, 9))
    keys = [k for k in ref_m[8] if k == "loss" or k.startswith(("per_scale_", "grad_norm", "bit_acc", "lr"))]
    for s in range(resumed_at + 1, 9):
        for k in keys:
            assert m[s][k] == ref_m[s][k], (s, k, m[s][k], ref_m[s][k])
    assert m[8]["data/skipped_total"] == skipped
    print(f"resumed at step {resumed_at}; steps {resumed_at + 1}..8 losses identical: "
          f"{[m[s]['loss'] for s in range(resumed_at + 1, 9)]}; {int(skipped)} corrupt samples skipped "
          f"(corrupt records {CORRUPT} of 40)")


def test_train_corrupt_records_are_logged(tmp_path, corrupt_shards):
    """The pipeline names every corrupt record it skips (no training needed)."""
    import logging

    from infinity_jax.data.arrayrecord import ArrayRecordSource
    from infinity_jax.data.bucketing import make_buckets
    from infinity_jax.data.pipeline import DataPipeline

    src = ArrayRecordSource(corrupt_shards)
    pipe = DataPipeline(src, make_buckets(schedule=((1, 1), (2, 2), (4, 4))), global_batch=4, seed=0, shuffle=False)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("infinity_jax.data.pipeline").addHandler(handler)
    try:
        batches = [next(pipe) for _ in range(10)]  # one epoch
    finally:
        logging.getLogger("infinity_jax.data.pipeline").removeHandler(handler)
    assert sum(b["skipped"] for b in batches) == len(CORRUPT)
    logged = {int(r.getMessage().split()[2]) for r in records}
    assert logged == set(CORRUPT)
    used = {int(i) for b in batches for i in b["index"]}
    assert not used & set(CORRUPT)
    assert all(b["image"].shape == (4, 64, 64, 3) for b in batches)
