"""Power-law fitter, compute frontier, sweep FLOP bookkeeping and the analysis command."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from infinity_jax import config_files
from infinity_jax.scaling import fit as sf
from infinity_jax.scaling.analyze import analyze
from infinity_jax.scaling.plan import plan_sweep, size_config, step_flops
from infinity_jax.transformer.config import InfinityConfig
from infinity_jax.transformer.config import size_config as official
from infinity_jax.transformer.flops import forward_flops, param_count, train_flops


# ----------------------------------------------------------------------------------- the fitter
def test_fit_recovers_known_exponent_from_noisy_data():
    """L = 1.7 + 40 N^-0.35 at 8 sizes (1e5 .. 1e9) with 0.5 % multiplicative noise."""
    E, A, alpha = 1.7, 40.0, 0.35
    x = np.logspace(5, 9, 8)
    hits = 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        y = (E + A * x ** -alpha) * np.exp(rng.normal(0, 0.005, x.size))
        f = sf.fit_power_law(x, y)
        assert abs(f.alpha - alpha) < 0.05, f.describe()
        assert abs(f.E - E) < 0.05, f.describe()
        assert f.se["alpha"] > 0 and f.dof == 5
        hits += abs(f.alpha - alpha) < 2.5 * f.se["alpha"]
        if seed == 0:
            f = sf.bootstrap_power_law(f, x, sf.residual_bootstrap(f, 100, seed=1))
            lo, hi = f.ci["alpha"]
            assert lo < alpha < hi, f.describe()
            assert f.bootstrap.shape == (100, 3)
    assert hits >= 4  # the standard errors are honest (~99 % coverage at 2.5 SE)


def test_fit_exact_data_and_plain_power_law():
    x = np.geomspace(1e10, 1e14, 6)
    f = sf.fit_power_law(x, 0.4 + 3e3 * x ** -0.3)
    np.testing.assert_allclose([f.E, f.A, f.alpha], [0.4, 3e3, 0.3], rtol=1e-6)
    np.testing.assert_allclose(f.predict(x), 0.4 + 3e3 * x ** -0.3, rtol=1e-9)
    g = sf.fit_power_law(x, 5.0 * x ** -0.1, irreducible=False)
    np.testing.assert_allclose([g.E, g.A, g.alpha], [0.0, 5.0, 0.1], rtol=1e-8, atol=1e-12)
    with pytest.raises(ValueError):
        sf.fit_power_law(x[:2], (0.4 + x ** -0.3)[:2])
    with pytest.raises(ValueError):
        sf.fit_power_law([1.0, 2.0, 3.0], [1.0, -1.0, 0.5])


def test_weighted_fit_uses_sigma():
    """A wild point with a huge sigma does not move the fit."""
    x = np.logspace(5, 9, 7)
    y = 1.0 + 20 * x ** -0.3
    y_bad = y.copy()
    y_bad[3] *= 1.3
    sigma = np.full(x.size, 1e-3)
    sigma[3] = 10.0
    f = sf.fit_power_law(x, y_bad, sigma=sigma)
    assert abs(f.alpha - 0.3) < 1e-3


def test_frontier_and_compute_optimal_size():
    """Chinchilla's fit L(N, D) = 1.69 + 406.4 N^-0.34 + 410.7 D^-0.28 (D = C / 6N) on a ladder of 7 sizes:
    the frontier is the lowest loss per compute point, N_opt ~ C^(0.28/0.62) and the frontier loss falls as
    E + A C^-(0.34 * 0.28 / 0.62) = E + A C^-0.1535."""
    sizes = {n: N for n, N in zip("abcdefg", np.geomspace(1e6, 4e9, 7))}
    recs = []
    for k, C in enumerate(np.geomspace(1e15, 1e21, 13)):
        for n, N in sizes.items():
            D = C / (6 * N)
            if D < 1e5:
                continue
            L = 1.69 + 406.4 / N ** 0.34 + 410.7 / D ** 0.28
            recs.append({"size": n, "params": N, "compute": C * (1 + 1e-3 * k), "nominal_compute": C, "loss": L})
    fr = sf.frontier(recs)
    assert len(fr.compute) == 13
    for c, l_ in zip(fr.compute, fr.loss):
        assert l_ == min(r["loss"] for r in recs if abs(r["compute"] - c) < 1e-6 * c)
    assert list(fr.params) == sorted(fr.params)  # larger budgets favour larger models
    co = sf.fit_simple_power_law(fr.compute, fr.params)
    assert abs(co["a"] - 0.28 / 0.62) < 0.05  # coarse: the optimum is one of 7 sizes
    f = sf.fit_power_law(fr.compute, fr.loss)
    assert abs(f.alpha - 0.34 * 0.28 / 0.62) < 0.01 and abs(f.E - 1.69) < 0.05, f.describe()
    c, l_ = sf.lower_envelope(np.array([1, 2, 3, 4.0]), np.array([5, 3, 4, 2.0]))
    assert c.tolist() == [1, 2, 4] and l_.tolist() == [5, 3, 2]


# ------------------------------------------------------------------------------ FLOP bookkeeping
def _hand_forward_flops(C, Ct, M, d, depth, scales, T):
    """Every matmul of one image's forward, listed as (rows, in, out) or attention pairs: 2 FLOPs per MAC."""
    areas = [h * w for h, w in scales]
    L = sum(areas)
    mm = []
    mm += [(T, Ct, 2 * C), (1, C, C)]             # text pool: K/V of the caption, output projection
    mm += [(T, Ct, C), (T, C, C)]                 # text_proj_for_ca (two layers)
    mm += [(1, C, 6 * C)]                         # shared AdaLN
    mm += [(L, d, C)]                             # word embedding
    mm += [(1, C, 2 * C), (L, C, 2 * d)]          # head AdaLN, head
    for _ in range(depth):
        mm += [(L, C, 3 * C), (L, C, C)]          # self-attention qkv, proj
        mm += [(L, C, C), (T, C, 2 * C), (L, C, C)]  # cross-attention q, text k/v, proj
        mm += [(L, C, M), (L, M, C)]              # FFN
    flops = sum(2 * r * i * o for r, i, o in mm)
    flops += 2 * 2 * 1 * T * C                    # pool attention: one query over T keys (scores + values)
    visible = np.cumsum(areas)
    pairs = sum(a * v for a, v in zip(areas, visible))  # block-causal: scale k sees scales <= k
    flops += depth * (2 * 2 * pairs * C + 2 * 2 * L * T * C)  # self- and cross-attention scores + values
    return flops


def test_sweep_flops_match_hand_count_and_plan_bookkeeping():
    config = _toy_config()
    # s2: depth 1, width 64, MLP 256, d 16, text width 64, 16 caption tokens, scales 1,2,3,4
    st = step_flops(size_config(config, "s2"))
    hand = _hand_forward_flops(64, 64, 256, 16, 1, [(1, 1), (2, 2), (3, 3), (4, 4)], 16)
    cfg = InfinityConfig(depth=1, embed_dim=64, num_heads=2, codebook_dim=16, text_channels=64, text_maxlen=16)
    assert forward_flops(cfg, [(1, 1, 1), (1, 2, 2), (1, 3, 3), (1, 4, 4)], 16)["total"] == hand
    assert st["flops_per_image"] == train_flops(cfg, [(1, 1, 1), (1, 2, 2), (1, 3, 3), (1, 4, 4)], 16) == 3 * hand
    assert st["flops_per_step"] == 3 * hand * config.batch_size
    assert st["seq_len"] == 30

    # iso-FLOP: every size spends the budget (to half a step), shares the compute grid, and
    # compute = steps x FLOPs/step at every point
    budget = 4e12
    plan, _ = plan_sweep(config, ["s2", "s4", "s5"], budget=budget, mode="iso_flop", points=4)
    assert plan["compute_grid"] == pytest.approx([budget / 8, budget / 4, budget / 2, budget])
    for n, p in plan["sizes"].items():
        f = p["flops_per_step"]
        assert abs(p["total_compute"] - budget) <= f / 2
        assert p["points"][-1]["steps"] == p["total_steps"]
        for q in p["points"]:
            assert q["compute"] == q["steps"] * f
            assert abs(q["compute"] - q["nominal_compute"]) <= f / 2
            assert q["steps"] >= plan["min_steps"]
    steps = [plan["sizes"][n]["total_steps"] for n in ("s2", "s4", "s5")]
    assert steps[0] > steps[1] > steps[2]
    # iso-steps: the same steps for every size, set by the largest size's budget
    plan2, _ = plan_sweep(config, ["s2", "s4", "s5"], budget=budget, mode="iso_steps", points=8)
    steps = {p["total_steps"] for p in plan2["sizes"].values()}
    assert len(steps) == 1
    assert abs(plan2["sizes"]["s5"]["total_compute"] - budget) <= plan2["sizes"]["s5"]["flops_per_step"] / 2
    with pytest.raises(ValueError, match="raise --budget"):
        plan_sweep(config, ["s5"], budget=1e9, mode="iso_flop")
    with pytest.raises(ValueError, match="unknown sweep size"):
        plan_sweep(config, ["nope"], budget=budget)


def _toy_config():
    path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "scaling_toy.py"
    return config_files.load(str(path))


def test_official_ladder_sizes_plan():
    """Official sizes resolve through size_config with the trainer's parameter count."""
    config = _toy_config()
    plan, cfgs = plan_sweep(config, ["layer12", "layer16"], budget=1e18, mode="iso_flop", points=3)
    assert cfgs["layer12"].size == "layer12"
    # the official backbone (depth, width, heads, d, ...); the config's other model settings stay
    keep = {k: v for k, v in config.model.to_dict().items()
            if k not in ("depth", "embed_dim", "num_heads", "block_chunks", "drop_path_rate", "codebook_dim")}
    assert plan["sizes"]["layer12"]["params"] == param_count(official("layer12", **keep))
    m16 = plan["sizes"]["layer16"]["model"]
    assert m16["embed_dim"] == 1152 and m16["codebook_dim"] == 32
    assert cfgs["layer16"].model.text_channels == config.model.text_channels == 64


# ------------------------------------------------------------------------------------ analysis
def _fake_sweep(root: pathlib.Path, alpha=0.3, E=0.35, A=40.0, n_img=64):
    """A sweep folder as `run` writes it, with per-image losses around L(N) = E + A N^-alpha at the last point."""
    rng = np.random.default_rng(0)
    sizes = {"s1": 2e5, "s2": 8e5, "s3": 3.2e6, "s4": 1.28e7, "s5": 5.12e7}
    grid = [1e12, 2e12, 4e12, 8e12]
    for n, N in sizes.items():
        d = root / n
        (d / "validation").mkdir(parents=True)
        f = 6.0 * N * 16 * 30
        total = int(round(grid[-1] / f))
        pts = [{"point": k, "nominal_compute": c, "steps": int(round(c / f)), "compute": int(round(c / f)) * f}
               for k, c in enumerate(grid)]
        plan = {"size": n, "params": int(N), "flops_per_step": f, "batch_size": 16, "total_steps": total,
                "scales": [[1, 1, 1], [1, 2, 2]], "points": pts}
        (d / "plan.json").write_text(json.dumps(plan))
        lines = []
        for q in pts:
            D = q["steps"] * 16.0
            L = E + A * N ** -alpha + 3.0 * D ** -0.5
            per = L * np.exp(rng.normal(0, 0.01, n_img))
            per_scale = np.stack([per * 0.8, per * 1.2], 1)
            acc = 1 - per / 2
            np.savez(d / "validation" / f"step_{q['steps']:08d}.npz", loss=per, loss_uniform=per,
                     bit_accuracy=acc, per_scale_loss=per_scale, per_scale_bit_accuracy=1 - per_scale / 2)
            rec = {"size": n, "params": int(N), "flops_per_step": f, "step": q["steps"], "point": q["point"],
                   "nominal_compute": q["nominal_compute"], "compute": q["compute"], "images_seen": q["steps"] * 16,
                   "loss": float(per.mean()), "loss_se": float(per.std() / 8), "loss_uniform": float(per.mean()),
                   "bit_accuracy": float(acc.mean()), "token_accuracy": 0.1, "n_images": n_img,
                   "per_scale_loss": per_scale.mean(0).tolist(),
                   "per_scale_bit_accuracy": (1 - per_scale / 2).mean(0).tolist(), "strength": 0.2}
            lines.append(json.dumps(rec))
        (d / "validation.jsonl").write_text("\n".join(lines) + "\n")


def test_analyze_writes_fits_plots_and_tables(tmp_path):
    _fake_sweep(tmp_path)
    fits = analyze(str(tmp_path), str(tmp_path / "out"), n_boot=20)
    h = fits["headline_params"]
    assert h["sizes"] == ["s1", "s2", "s3", "s4", "s5"]
    assert len(fits["loss_vs_params"]) == 4
    f = h["fit"]
    assert f.alpha > 0.1 and f.ci["alpha"][0] < f.alpha < f.ci["alpha"][1]
    assert np.all(np.diff(h["y"]) < 0)  # loss falls with size
    assert fits["loss_vs_compute"]["fit"].alpha > 0
    for name in ("loss_scaling.png", "bit_accuracy.png", "per_scale_loss.png", "scaling.md", "scaling_points.csv",
                 "scaling_fits.csv", "fits.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    md = (tmp_path / "out" / "scaling.md").read_text()
    assert "loss vs params" in md and "Compute-efficient frontier" in md
    assert (tmp_path / "out" / "loss_scaling.png").read_bytes()[:4] == b"\x89PNG"
    csv = (tmp_path / "out" / "scaling_points.csv").read_text().splitlines()
    assert len(csv) == 1 + 5 * 4 and "loss_scale1" in csv[0]


def test_analyze_command_line(tmp_path):
    _fake_sweep(tmp_path)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "infinity_jax.scaling", "analyze", f"--workdir={tmp_path}",
                        "--n_boot=0"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "loss vs parameters" in r.stdout and "| fit | at | alpha |" in r.stdout
    assert (tmp_path / "analysis" / "loss_scaling.png").exists()


@pytest.mark.slow  # trains 3 toy models (a few minutes)
def test_toy_sweep_runs_and_resumes(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "infinity_jax.scaling", "run", "--config=configs/scaling_toy.py:points=2",
           "--config.validation.num_images=32", "--config.sweep.min_steps=5", "--sizes=s1,s2,s3", "--budget=1e10",
           "--mode=iso_flop",
           f"--workdir={tmp_path}"]
    root = pathlib.Path(__file__).resolve().parents[2]
    # SIGTERM once the first point is validated: the size's step is saved, the sweep exits 128 + 15
    first = tmp_path / "s1" / "validation.jsonl"
    with open(tmp_path / "stopped.log", "w") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
        deadline = time.monotonic() + 600
        while p.poll() is None and not (first.exists() and first.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=300) == 128 + signal.SIGTERM, (tmp_path / "stopped.log").read_text()[-3000:]
    assert "stopped by signal 15; checkpoint saved" in (tmp_path / "stopped.log").read_text()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=900)  # resumes and ends
    assert r.returncode == 0, r.stderr[-3000:]
    for size in ("s1", "s2", "s3"):  # every point validated once, in order, across the stop
        recs = [json.loads(x) for x in (tmp_path / size / "validation.jsonl").read_text().splitlines()]
        plan = json.loads((tmp_path / size / "plan.json").read_text())
        assert [r["step"] for r in recs] == [q["steps"] for q in plan["points"]]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=900)  # resumes: nothing to do
    assert r.returncode == 0 and "validated already" in r.stderr + r.stdout
    r = subprocess.run([c if not c.startswith("--budget") else "--budget=2e10" for c in cmd], capture_output=True,
                       text=True, env=env, cwd=root, timeout=900)
    assert r.returncode == 2 and "another plan" in r.stderr
    r = subprocess.run([sys.executable, "-m", "infinity_jax.scaling", "analyze", f"--workdir={tmp_path}", "--n_boot=10"],
                       capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "analysis" / "loss_scaling.png").exists()
