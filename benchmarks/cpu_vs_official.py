"""Our CPU times beside the official PyTorch reference tables, row by row.

  JAX_PLATFORMS=cpu python benchmarks/cpu_vs_official.py                     # every row (a few minutes)
  JAX_PLATFORMS=cpu python benchmarks/cpu_vs_official.py --rows sampling --sizes 0.06M --repeats 1
  JAX_PLATFORMS=cpu python benchmarks/cpu_vs_official.py --rows train --configs a,c --json out.json

The official figures are parsed from ``../shared/benchmarks/official_cpu.md`` (official code, 2 CPU
threads, fp32, eager); our side is measured in the same run with the same settings:

* sampling (official-tiny weights of ``../shared/fixtures/official-tiny``): CFG 4, tau 0.5, top-k 900,
  top-p 0.97, fp32; "AR loop" = ``Sampler.generate`` without decoding, "VAE decode" = ``jit_decode``
  of the summed codes, "total" = both back to back (timed as one call).
* one training step at 256², B = 2: a = official-tiny, b = depth 4 / embed 256 / 4 heads,
  c = layer12 size with 12 heads of 64 (as in the official table), b and c with random weights; the
  fixture's VAE encodes for all three. Each column is its own jitted function: VAE encode,
  BSC (``flip_requant``, strength 0.3), forward+loss, fwd+bwd (``loss_and_grads``; backward =
  fwd+bwd minus forward+loss), clip+AdamW (``apply_update`` with ``make_optimizer``), model step
  (``loss_and_grads`` + ``apply_update`` in one jit) and total (encode + BSC + model step in one jit).
  Drop-path and caption dropout are off (deterministic step). Each config runs in its own process
  so that its peak RSS is its own.

Every figure is the median of ``--repeats`` calls after one warm-up call (compile time printed apart);
ratio = official / ours (> 1: we are faster).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import pathlib
import platform
import re
import resource
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from infinity_jax.schedules import get_schedule
from infinity_jax.sampling.sampler import Sampler, SamplingConfig
from infinity_jax.sharding import make_mesh
from infinity_jax.state_dict import load_state_dict
from infinity_jax.tokenizer.convert import from_official as vae_from_official
from infinity_jax.tokenizer.vae import VAEConfig, jit_decode
from infinity_jax.training import state as st
from infinity_jax.training.optimizer import learning_rate_schedule, make_optimizer
from infinity_jax.training.step import apply_update, loss_and_grads
from infinity_jax.transformer.config import InfinityConfig, size_config
from infinity_jax.transformer.convert import load as load_transformer
from infinity_jax.transformer.loss import infinity_loss
from infinity_jax.transformer.model import Infinity
from infinity_jax.transformer.self_correction import flip_requant

SHARED = pathlib.Path(os.environ.get("INFINITY_JAX_SHARED") or pathlib.Path(__file__).resolve().parents[1].parent / "shared")
OFFICIAL_MD = SHARED / "benchmarks" / "official_cpu.md"
FIXTURE = SHARED / "fixtures" / "official-tiny"
FIXTURE_FILES = ("manifest.json", "weights_infinity.npz", "weights_vae.npz")

SAMPLING_COLS = (("ar_s", "AR loop s"), ("decode_s", "VAE decode s"), ("total_s", "total s"))
TRAIN_COLS = (("encode_s", "VAE encode s"), ("bsc_s", "BSC s"), ("forward_s", "forward+loss s"),
              ("backward_s", "backward s"), ("update_s", "clip+AdamW s"), ("model_step_s", "model step s"),
              ("total_s", "total s"), ("peak_rss_mb", "peak RSS MB"))
SETTINGS = SamplingConfig(cfg=4.0, tau=0.5, top_k=900, top_p=0.97)
TEXT_LEN = 12
TRAIN_PN, TRAIN_BATCH = "0.06M", 2


class SetupError(Exception):
    """A missing input file: reported in one line."""


# -- the official tables ---------------------------------------------------------------------------
def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every pipe table of ``text`` as a list of rows {header: cell}."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.strip().startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2:
            head, body = block[0], [r for r in block[2:] if len(r) == len(block[0])]
            tables.append([dict(zip(head, r)) for r in body])
        block = []
    return tables


_SAMPLING_NAME = re.compile(r"^(\w+),\s*(\d+)²\s*\(([\d.]+M)\)$")


def parse_official(text: str) -> dict:
    """The official tables -> {"sampling": [row...], "train": [row...]}, numbers as floats.

    Sampling rows: config, res, pn, scales, tokens, B, ar_s, decode_s, total_s; key "a 256² (0.06M) B=1".
    Training rows: config and the ``TRAIN_COLS`` keys; key "a".
    """
    out = {"sampling": [], "train": []}
    for table in markdown_tables(text):
        if not table:
            continue
        head = table[0].keys()
        if "sampling" in head:
            for r in table:
                m = _SAMPLING_NAME.match(r["sampling"])
                if m is None:
                    raise ValueError(f"{OFFICIAL_MD.name}: unreadable sampling row name {r['sampling']!r}")
                row = {"config": m.group(1), "res": int(m.group(2)), "pn": m.group(3), "scales": int(r["scales"]),
                       "tokens": int(r["tokens"]), "B": int(r["B"])}
                row.update({k: float(r[h]) for k, h in SAMPLING_COLS})
                row["key"] = f"{row['config']} {row['res']}² ({row['pn']}) B={row['B']}"
                out["sampling"].append(row)
        elif "config" in head:
            for r in table:
                row = {"config": r["config"], "key": r["config"]}
                row.update({k: float(r[h]) for k, h in TRAIN_COLS if h in r})
                out["train"].append(row)
    if not out["sampling"] or not out["train"]:
        raise ValueError(f"{OFFICIAL_MD.name}: expected a sampling table and a training-step table")
    return out


def read_official(path: pathlib.Path = OFFICIAL_MD) -> dict:
    if not path.exists():
        raise SetupError(f"official reference table not found: {path} (the shared folder must sit beside the repository)")
    return parse_official(path.read_text())


# -- our side --------------------------------------------------------------------------------------
def check_fixture():
    missing = [f for f in FIXTURE_FILES if not (FIXTURE / f).exists()]
    if missing:
        raise SetupError(f"official-tiny fixture incomplete or missing: {FIXTURE} lacks {', '.join(missing)}")


def manifest() -> dict:
    return json.loads((FIXTURE / "manifest.json").read_text())


def fixture_vae():
    return vae_from_official(load_state_dict(FIXTURE / "weights_vae.npz"),
                             VAEConfig.from_official(manifest()["config"]["vae"]))


def median_time(fn, repeats: int) -> tuple[float, float]:
    """(first call s, median of ``repeats`` further calls s); ``fn`` blocks until its result is ready."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def measure_sampling(rows: list[dict], repeats: int, log=print) -> dict:
    """{row key: {ar_s, decode_s, total_s, compile_s}} for the official-tiny sampling rows."""
    model = load_transformer(str(FIXTURE / "weights_infinity.npz"), InfinityConfig.from_official(manifest()["config"]))
    decode = jit_decode(fixture_vae())
    sampler = Sampler(model)
    rng = np.random.default_rng(0)
    out = {}
    for row in rows:
        if row["config"] != "a":
            log(f"sampling {row['key']}: only official-tiny (a) is measured; skipped")
            continue
        sched = get_schedule(1.0, row["pn"]).scales
        B = row["B"]
        text = jnp.asarray(rng.normal(size=(B, TEXT_LEN, model.cfg.text_channels)), jnp.float32)
        mask = jnp.ones((B, TEXT_LEN), bool)
        seed = iter(range(10**6))

        def ar():
            s = next(seed)
            res = sampler.generate(text, mask, sched, settings=SETTINGS, seeds=list(range(s * B, s * B + B)),
                                   decode=False)
            return jax.block_until_ready(res.summed_codes)

        t0 = time.perf_counter()
        codes = ar()
        c_ar = time.perf_counter() - t0
        t0 = time.perf_counter()
        jax.block_until_ready(decode(codes))
        c_dec = time.perf_counter() - t0
        _, t_ar = median_time(ar, repeats)
        _, t_dec = median_time(lambda: jax.block_until_ready(decode(codes)), repeats)
        _, t_tot = median_time(lambda: jax.block_until_ready(decode(ar())), repeats)
        out[row["key"]] = {"ar_s": t_ar, "decode_s": t_dec, "total_s": t_tot, "compile_s": c_ar + c_dec}
        log(f"sampling {row['key']}: {len(sched)} scales, {sum(h * w for _, h, w in sched)} tokens: "
            f"AR {t_ar:.3f} s, decode {t_dec:.3f} s, total {t_tot:.3f} s")
    return out


def train_model_config(name: str) -> InfinityConfig:
    """a: official-tiny; b: depth 4, embed 256, 4 heads; c: layer12 with 12 heads of 64 (official table)."""
    if name == "a":
        return InfinityConfig.from_official(manifest()["config"])
    if name == "b":
        return InfinityConfig.from_official(manifest()["config"], depth=4, embed_dim=256, num_heads=4,
                                            drop_path_rate=0.0).validate()
    if name == "c":
        return size_config("layer12", num_heads=12, drop_path_rate=0.0)
    raise SetupError(f"unknown training config {name!r} (a, b, c)")


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB): VmHWM, which starts afresh at exec (``ru_maxrss``
    keeps the parent's peak across fork + exec, so it is only the fallback)."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_train(name: str, repeats: int) -> dict:
    """One config's training-step columns (seconds), compile times and peak RSS (MB)."""
    cfg = train_model_config(name)
    vae = fixture_vae()
    sched = get_schedule(1.0, TRAIN_PN).scales
    B, T = TRAIN_BATCH, TEXT_LEN
    H = sched[-1][1] * vae.config.stride
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, size=(B, H, H, 3)), jnp.float32)
    text = jnp.asarray(rng.normal(size=(B, T, cfg.text_channels)), jnp.float32)
    mask = jnp.ones((B, T), bool)
    key = jax.random.PRNGKey(0)

    if name == "a":
        model = load_transformer(str(FIXTURE / "weights_infinity.npz"), cfg)
    else:
        model = Infinity(cfg, rngs=nnx.Rngs(0))
    mcfg = model.cfg
    md = st.split_model(lambda: Infinity(mcfg, rngs=nnx.Rngs(0)), make_mesh({"data": 1}, devices=jax.devices()[:1]))
    params = st.place_params(md, st.state_to_tree(nnx.state(model, nnx.Param)))
    del model
    optim = ml_collections.ConfigDict(dict(name="adamw", lr=1e-3, b1=0.9, b2=0.97, eps=1e-8, wd=0.005, clip=5.0))
    tx = make_optimizer(optim, learning_rate_schedule(1e-3, 1))
    opt_state = jax.jit(tx.init)(params)
    vae_graph, vae_state = nnx.split(vae)

    def encode(vs, images):
        return nnx.merge(vae_graph, vs).encode_features(images)

    def bsc(feats, key):
        out = flip_requant(feats, sched, key, strength=0.3)
        return out.x_BLC_wo_prefix, out.labels

    def forward_loss(params, x, labels):
        return infinity_loss(md.merge(params)(text, mask, x, sched, deterministic=True), labels, sched).loss

    def fwd_bwd(params, x, labels):
        out, grads = loss_and_grads(md.merge, params, text, mask, x, labels, sched, deterministic=True)
        return out.loss, grads

    def update(params, opt_state, grads):
        return apply_update(tx, params, opt_state, grads)

    def model_step(params, opt_state, x, labels):
        out, grads = loss_and_grads(md.merge, params, text, mask, x, labels, sched, deterministic=True)
        p, o, gnorm = apply_update(tx, params, opt_state, grads)
        return p, o, out.loss, gnorm

    def full_step(params, opt_state, vs, images, key):
        feats = jax.lax.stop_gradient(encode(vs, images))
        return model_step(params, opt_state, *bsc(feats, key))

    j = {n: jax.jit(f) for n, f in dict(encode=encode, bsc=bsc, forward=forward_loss, fwd_bwd=fwd_bwd,
                                          update=update, model_step=model_step, full_step=full_step).items()}
    compile_s = {}
    t0 = time.perf_counter()
    feats = jax.block_until_ready(j["encode"](vae_state, images))
    compile_s["encode_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    x, labels = jax.block_until_ready(j["bsc"](feats, key))
    compile_s["bsc_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, grads = jax.block_until_ready(j["fwd_bwd"](params, x, labels))
    compile_s["fwd_bwd_s"] = time.perf_counter() - t0
    calls = {
        "encode_s": lambda: j["encode"](vae_state, images),
        "bsc_s": lambda: j["bsc"](feats, key),
        "forward_s": lambda: j["forward"](params, x, labels),
        "fwd_bwd_s": lambda: j["fwd_bwd"](params, x, labels),
        "update_s": lambda: j["update"](params, opt_state, grads),
        "model_step_s": lambda: j["model_step"](params, opt_state, x, labels),
        "total_s": lambda: j["full_step"](params, opt_state, vae_state, images, key),
    }
    out = {}
    for k, fn in calls.items():
        first, med = median_time(lambda fn=fn: jax.block_until_ready(fn()), repeats)
        out[k] = med
        compile_s.setdefault(k, first)
    out["backward_s"] = out["fwd_bwd_s"] - out["forward_s"]
    out["compile_s"] = compile_s
    out["peak_rss_mb"] = peak_rss_mb()
    out["params_m"] = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params)) / 1e6
    return out


def measure_train_isolated(name: str, repeats: int) -> dict:
    """``measure_train`` in a fresh process (its own peak RSS)."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as ex:
        return ex.submit(measure_train, name, repeats).result()


# -- report ----------------------------------------------------------------------------------------
def fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def comparison_table(title: str, rows: list[dict], ours: dict, cols) -> list[str]:
    """Markdown: one line per (official row, column) with official | ours | ratio (official / ours)."""
    lines = [f"| {title} | column | official | ours | ratio |", "|---|---|---|---|---|"]
    for row in rows:
        mine = ours.get(row["key"]) or {}
        for k, head in cols:
            off, me = row.get(k), mine.get(k)
            if off is None and me is None:
                continue
            digits = 0 if k == "peak_rss_mb" else 3
            ratio = off / me if off is not None and me else None
            lines.append(f"| {row['key']} | {head} | {fmt(off, digits)} | {fmt(me, digits)} | {fmt(ratio, 2)} |")
    return lines


def ratios(rows: list[dict], ours: dict, cols) -> dict:
    """{row key: {column: official / ours}} where both are known."""
    return {r["key"]: {k: r[k] / ours[r["key"]][k] for k, _ in cols
                       if r.get(k) is not None and ours.get(r["key"], {}).get(k)} for r in rows}


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {threads} threads, jax {jax.__version__} ({jax.devices()[0].platform})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="sampling,train", help="sections to run: sampling, train")
    ap.add_argument("--sizes", default="0.06M,0.25M,1M", help="sampling pn values (official rows at those sizes)")
    ap.add_argument("--configs", default="a,b,c", help="training configs (a, b, c)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write every figure (official, ours, ratios) to this file")
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines as they come, also into a file
    sections = [s.strip() for s in args.rows.split(",") if s.strip()]
    bad = sorted(set(sections) - {"sampling", "train"})
    if bad or args.repeats < 1:
        ap.error(f"--rows takes sampling,train (got {bad})" if bad else "--repeats must be >= 1")
    try:
        official = read_official()
        check_fixture()
        if "train" in sections:
            for c in args.configs.split(","):
                train_model_config(c.strip())
    except (SetupError, ValueError) as e:
        sys.exit(f"error: {e}")

    report = {"machine": machine(), "repeats": args.repeats, "official": official, "ours": {}, "ratio": {}}
    lines = []
    if "sampling" in sections:
        sizes = {s.strip() for s in args.sizes.split(",")}
        rows = [r for r in official["sampling"] if r["pn"] in sizes]
        ours = measure_sampling(rows, args.repeats)
        report["ours"]["sampling"] = ours
        report["ratio"]["sampling"] = ratios(rows, ours, SAMPLING_COLS)
        lines += ["", "Sampling (official-tiny, CFG 4, tau 0.5, top-k 900, top-p 0.97, fp32), seconds:", ""]
        lines += comparison_table("sampling", rows, ours, SAMPLING_COLS)
        lines += ["", "compile (first call, AR + decode): " + ", ".join(
            f"{k} {v['compile_s']:.1f} s" for k, v in ours.items())]
    if "train" in sections:
        names = [c.strip() for c in args.configs.split(",")]
        rows = [r for r in official["train"] if r["config"] in names]
        ours = {}
        for r in rows:
            ours[r["key"]] = measure_train_isolated(r["config"], args.repeats)
            m = ours[r["key"]]
            print(f"train {r['key']} ({m['params_m']:.1f} M parameters): model step {m['model_step_s']:.3f} s, "
                  f"total {m['total_s']:.3f} s, peak RSS {m['peak_rss_mb']:.0f} MB")
        report["ours"]["train"] = ours
        report["ratio"]["train"] = ratios(rows, ours, TRAIN_COLS)
        lines += ["", f"Training step, 256² B={TRAIN_BATCH}, seconds (backward = fwd+bwd minus forward+loss; "
                  "a: official-tiny, b: depth 4/256/4 heads, c: layer12 with 12 heads of 64; drop-path off):", ""]
        lines += comparison_table("config", rows, ours, TRAIN_COLS)
        lines += ["", "compile (first call of each jitted function): " + "; ".join(
            f"{k}: " + ", ".join(f"{c[:-2]} {s:.1f} s" for c, s in v["compile_s"].items()) for k, v in ours.items())]
    lines += ["", "Absolute times vary by ±25 % between runs and machines: the ratios (official / ours, > 1 = we "
              f"are faster) are what count. Our side ran on: {report['machine']}."]
    print("\n".join(lines))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
