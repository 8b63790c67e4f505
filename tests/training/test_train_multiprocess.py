"""Two processes on this machine (``jax.distributed`` on localhost, CPU, gloo collectives) train
together: each loads half of every global batch, the losses equal a one-process run on two
simulated devices, and their checkpoint resumes in a single process."""
import json
import math
import socket
import subprocess

from train_helpers import ROOT, read_metrics, run_train, subprocess_env, train_command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _batches(path):
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_train_two_processes_split_the_global_batch(tmp_path, compile_cache):
    # (tokenizer ahead of the step and no remat: the same math, a third less compiling on 2 cores)
    over = {"batch_size": 4, "total_steps": 3, "checkpoint.every": 2, "debug.log_batches": True,
            "mesh.fsdp": -1, "tokenizer.in_step": False, "model.remat": False}
    work = tmp_path / "two"
    port = _free_port()
    procs = []
    for pid in range(2):
        env = subprocess_env(1, INFINITY_JAX_DISTRIBUTED=1, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                             JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=pid)
        procs.append(subprocess.Popen(train_command(work, over), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=400)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-5000:]
    assert "2 processes" in outs[0]
    b0, b1 = _batches(work / "batches_process0.jsonl"), _batches(work / "batches_process1.jsonl")
    assert sorted(b0) == sorted(b1) == [1, 2, 3]
    for s in b0:
        assert b0[s]["batch"] == b1[s]["batch"] and b0[s]["bucket"] == b1[s]["bucket"]
        assert len(b0[s]["index"]) == len(b1[s]["index"]) == 2  # global batch 4 split in halves
        assert not set(b0[s]["index"]) & set(b1[s]["index"])
    m2 = read_metrics(work)
    assert sorted(m2) == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in m2.values())
    assert (work / "checkpoints" / "3").is_dir()

    # the same run in one process with two simulated devices (one step further)
    one = tmp_path / "one"
    run_train(one, {**over, "total_steps": 4, "compilation_cache": compile_cache}, devices=2)
    m1 = read_metrics(one)
    b = _batches(one / "batches_process0.jsonl")
    for s in (1, 2, 3):
        assert b[s]["index"] == b0[s]["index"] + b1[s]["index"]
        assert abs(m1[s]["loss"] - m2[s]["loss"]) <= 1e-5, (s, m1[s]["loss"], m2[s]["loss"])

    # the two-process checkpoint resumes in one process (another process count, same mesh size)
    res = run_train(work, {**over, "total_steps": 4, "compilation_cache": compile_cache}, devices=2)
    assert "resumed from" in res.stdout and "/checkpoints/3 " in res.stdout
    m = read_metrics(work)
    assert _batches(work / "batches_process0.jsonl")[4]["index"] == b[4]["index"]
    assert abs(m[4]["loss"] - m1[4]["loss"]) <= 1e-5
    print(f"\ntwo processes: losses {[round(m2[s]['loss'], 7) for s in (1, 2, 3)]}, one process: "
          f"{[round(m1[s]['loss'], 7) for s in (1, 2, 3, 4)]}; resumed in one process: step 4 loss "
          f"{m[4]['loss']:.7f}; rows per process per step 2 of 4")
