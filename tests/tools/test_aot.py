"""The ahead-of-time compile report (``infinity_jax.tools.aot``): TPU topologies compiled on the CPU.

The compile tests need libtpu (``pip install -e '.[tpu]'``, which CI installs) and skip only when
it is missing. The tiny configs keep each compile to tens of seconds.
"""
import json
import logging
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from infinity_jax import config_files
from infinity_jax.sharding import indivisible_params, make_mesh, state_shardings
from infinity_jax.tools.hlo_stats import COLLECTIVES, hlo_stats
from infinity_jax.tools.tpu import CHIPS, TopologyError, chip_for_device_kind, parse_topology
from infinity_jax.training import state as st
from infinity_jax.training.optimizer import make_optimizer
from infinity_jax.transformer.attention import resolve as resolve_attention
from infinity_jax.transformer.config import InfinityConfig
from infinity_jax.transformer.model import Infinity

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_FILE = ROOT / "configs" / "infinity.py"

#: The attention implementation whose train-step temporaries must grow sub-quadratically.
SUBQUADRATIC_ATTENTION = ("xla",)


def needs_libtpu():
    return pytest.importorskip("libtpu", reason="libtpu not installed (pip install -e '.[tpu]')")


def load_config(arg: str = "size=tiny,runlocal=True", **overrides):
    # features in the batch: the frozen encoder is not compiled (faster)
    return config_files.load(f"{CONFIG_FILE}:{arg}",
                             {"tokenizer.in_step": False, **{k.replace("__", "."): v for k, v in overrides.items()}})


def tpu_devices(name: str):
    from infinity_jax.tools.tpu import topology_devices

    needs_libtpu()
    return topology_devices(parse_topology(name))


# ------------------------------------------------------------------------------ no libtpu needed
def test_topology_names():
    t = parse_topology("v5p-128")
    assert (t.chip.name, t.grid, t.chips, t.topology_name) == ("v5p", (4, 4, 4), 64, "v5p:4x4x4")
    assert parse_topology("v5p:4x4x4").grid == (4, 4, 4)
    assert parse_topology("v5p-8").grid == (2, 2, 1) and parse_topology("v5p-8").chips_per_host_bounds == (2, 2, 1)
    assert parse_topology("v4-32").grid == (2, 2, 4)
    assert parse_topology("v5e-16").grid == (4, 4) and parse_topology("v6e-8").grid == (2, 4)
    assert parse_topology("v5e:1x1").chips_per_host_bounds == (1, 1, 1)
    for bad in ("v7-8", "v5p-6", "v5p:4x4", "tpu"):
        with pytest.raises(TopologyError):
            parse_topology(bad)
    assert chip_for_device_kind("TPU v5 lite") is CHIPS["v5e"] and chip_for_device_kind("TPU v5") is CHIPS["v5p"]
    assert chip_for_device_kind("TPU v6 lite") is CHIPS["v6e"] and chip_for_device_kind("cpu") is None
    assert (CHIPS["v5p"].peak_tflops, CHIPS["v5p"].hbm_gbps, CHIPS["v5p"].hbm_gib) == (459.0, 2765.0, 95.0)


def test_hlo_stats_counts_loops_and_collectives():
    """A hand-written module: a dot in a while body of 8 trips (after a Pallas custom call whose
    backend_config spans lines, one starting with '}}') and an all-gather in the entry."""
    text = """HloModule m

%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[4,8] get-tuple-element(%p), index=1
  %w = f32[8,8] constant({...})
  %k = f32[4,8] custom-call(%x), custom_call_target="tpu_custom_call", backend_config={"config": {"a": 1,
"meta":"{\\"block_q\\": 128}"
}}, metadata={op_name="pallas kernel"}
  %d = f32[4,8] dot(%k, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %t = (s32[], f32[4,8]) tuple(%i, %d)
}

%cond (p: (s32[], f32[4,8])) -> pred[] {
  %p = (s32[], f32[4,8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(8)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: f32[1,8]) -> (s32[], f32[4,8]) {
  %a = f32[1,8] parameter(0)
  %g = f32[4,8] all-gather(%a), replica_groups={{0,1,2,3}}, dimensions={0}
  %z = s32[] constant(0)
  %t = (s32[], f32[4,8]) tuple(%z, %g)
  ROOT %w = (s32[], f32[4,8]) while(%t), condition=%cond, body=%body
}
"""
    s = hlo_stats(text)
    assert s.matmul_flops == 8 * 2 * 4 * 8 * 8
    assert s.loops == [("body", 8)]
    assert s.collectives["all-gather"] == {"count": 1, "executed": 1.0, "bytes": 128.0}
    assert s.ici_bytes == pytest.approx(128 * 3 / 4)
    assert set(s.collectives) == set(COLLECTIVES)
    # a convolution whose window runs over padding (XLA's form of some batched matmuls on TPU):
    # only the taps that meet the one real input position count
    conv = """HloModule c

ENTRY %main (a: f32[4,1,16], b: f32[8,16,3]) -> f32[4,1,3] {
  %a = f32[4,1,16] parameter(0)
  %b = f32[8,16,3] parameter(1)
  ROOT %c = f32[4,1,3] convolution(%a, %b), window={size=8 pad=7_0}, dim_labels=b0f_0io->b0f
}
"""
    assert hlo_stats(conv).matmul_flops == 2 * 4 * 3 * 16


def test_hlo_stats_counts_one_layer_of_a_stack_per_trip():
    """A layer loop over stacked weights and a stacked cache: each trip reads one layer's slice
    (also through a nested fusion) and updates the cache in place, so HBM bytes count the slices
    and the update, not the whole stack per trip."""
    text = """HloModule s

%slice_w (w: f32[8,64,64], i: s32[]) -> f32[64,64] {
  %w = f32[8,64,64] parameter(0)
  %i = s32[] parameter(1)
  %z = s32[] constant(0)
  %d = f32[1,64,64] dynamic-slice(%w, %i, %z, %z), dynamic_slice_sizes={1,64,64}
  ROOT %b = f32[64,64] bitcast(%d)
}

%mm (x: f32[4,64], w: f32[8,64,64], i: s32[]) -> f32[4,64] {
  %x = f32[4,64] parameter(0)
  %w = f32[8,64,64] parameter(1)
  %i = s32[] parameter(2)
  %wl = f32[64,64] fusion(%w, %i), kind=kLoop, calls=%slice_w
  ROOT %d = f32[4,64] dot(%x, %wl), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%put (c: f32[8,1024,64], u: f32[4,64], i: s32[]) -> f32[8,1024,64] {
  %c = f32[8,1024,64] parameter(0)
  %u = f32[4,64] parameter(1)
  %i = s32[] parameter(2)
  %z = s32[] constant(0)
  %ub = f32[1,4,64] bitcast(%u)
  ROOT %r = f32[8,1024,64] dynamic-update-slice(%c, %ub, %i, %z, %z)
}

%body (p: (s32[], f32[4,64], f32[8,64,64], f32[8,1024,64])) -> (s32[], f32[4,64], f32[8,64,64], f32[8,1024,64]) {
  %p = (s32[], f32[4,64], f32[8,64,64], f32[8,1024,64]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[4,64] get-tuple-element(%p), index=1
  %w = f32[8,64,64] get-tuple-element(%p), index=2
  %c = f32[8,1024,64] get-tuple-element(%p), index=3
  %y = f32[4,64] fusion(%x, %w, %i), kind=kOutput, calls=%mm
  %c2 = f32[8,1024,64] fusion(%c, %y, %i), kind=kLoop, calls=%put
  ROOT %t = (s32[], f32[4,64], f32[8,64,64], f32[8,1024,64]) tuple(%i, %y, %w, %c2)
}

%cond (p: (s32[], f32[4,64], f32[8,64,64], f32[8,1024,64])) -> pred[] {
  %p = (s32[], f32[4,64], f32[8,64,64], f32[8,1024,64]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(8)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (x: f32[4,64], w: f32[8,64,64], c: f32[8,1024,64]) -> (s32[], f32[4,64], f32[8,64,64], f32[8,1024,64]) {
  %x = f32[4,64] parameter(0)
  %w = f32[8,64,64] parameter(1)
  %c = f32[8,1024,64] parameter(2)
  %z = s32[] constant(0)
  %t = (s32[], f32[4,64], f32[8,64,64], f32[8,1024,64]) tuple(%z, %x, %w, %c)
  ROOT %r = (s32[], f32[4,64], f32[8,64,64], f32[8,1024,64]) while(%t), condition=%cond, body=%body
}
"""
    s = hlo_stats(text)
    x, layer, update = 4 * 64 * 4, 64 * 64 * 4, 4 * 64 * 4
    # per trip: the matmul reads x, one layer's weights and the index, writes y; the cache update reads y
    # and the index and writes y's bytes in place (the stacks would be 8 x 16 KiB and 8 x 256 KiB)
    cond = 4 + 4 + 1  # the loop condition's compare, counted once
    assert s.hbm_bytes == 8 * ((x + layer + 4 + x) + (update + 4 + update)) + cond
    assert s.matmul_flops == 8 * 2 * 4 * 64 * 64


def test_sharding_warns_and_lists_indivisible_params(caplog):
    """embed 132 on fsdp=8: the 'embed' dimensions are replicated, with a warning naming each."""
    cfg = InfinityConfig(depth=1, embed_dim=132, num_heads=3, text_channels=64, text_maxlen=8)
    _, params, _ = nnx.split(nnx.eval_shape(lambda: Infinity(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)
    mesh = make_mesh({"fsdp": 8})
    with caplog.at_level(logging.WARNING, logger="infinity_jax.sharding"):
        sh = state_shardings(params, mesh)
    found = indivisible_params(params, mesh)
    assert found, "embed 132 is not divisible by 8"
    for d in found:
        assert d["mesh_axes"] == ("fsdp",) and d["mesh_size"] == 8 and d["shape"][d["dim"]] % 8
    qkv = [d for d in found if d["param"].endswith("mat_qkv/kernel")]
    assert qkv and qkv[0]["logical"] == "embed" and qkv[0]["shape"] == (132, 3, 132)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("mat_qkv/kernel" in m and "(132, 3, 132)" in m and "'embed'" in m and "fsdp" in m for m in msgs), msgs
    assert len(msgs) == len(found)
    specs = {"/".join(str(getattr(k, "key", k)) for k in path): v.get_value().spec
             for path, v in nnx.to_flat_state(sh)}
    for d in found:
        assert specs[d["param"]][d["dim"]] is None


def _md(mesh, cfg=None):
    cfg = cfg or InfinityConfig(depth=2, embed_dim=128, num_heads=2, text_channels=64, text_maxlen=8)
    return st.split_model(lambda: Infinity(cfg, rngs=nnx.Rngs(0)), mesh)


def _tx():
    import ml_collections

    o = ml_collections.ConfigDict(dict(name="adamw", b1=0.9, b2=0.97, eps=1e-8, wd=0.005, clip=5.0))
    return make_optimizer(o, lambda s: 1e-3)


def test_opt_state_shardings_match_optax_on_devices():
    """The shapes-only mapping equals optax's own ``tree_map_params`` on a real (CPU) mesh."""
    md = _md(make_mesh({"fsdp": 8}))
    tx = _tx()
    ours = st.opt_state_shardings(tx, md)
    abs_opt = jax.eval_shape(tx.init, md.abstract_params())
    ref = optax.tree_map_params(tx, lambda _, s: s, abs_opt, md.shardings,
                                transform_non_params=lambda _: st.replicated(md.mesh),
                                is_leaf=lambda x: isinstance(x, NamedSharding))
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    assert all(a == b for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)))
    assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(ours))


def test_opt_state_shardings_deviceless():
    """On a mesh of compile-only TPU devices, under ``jax.set_mesh``: nothing is executed."""
    devices = tpu_devices("v5p:2x2x1")
    mesh = make_mesh({"fsdp": -1}, devices=devices)
    md = _md(mesh)
    tx = _tx()
    with jax.set_mesh(mesh):
        sh = st.train_state_shardings(tx, md, ema=True)
        abstract = st.abstract_train_state(tx, md, ema=True)
    mu = sh["opt_state"][1][0].mu  # chain(clip, adamw(chain(scale_by_adam, ...)))
    assert jax.tree.leaves(mu) == jax.tree.leaves(md.shardings)
    assert all(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree.leaves(abstract))
    assert {d.platform for s in jax.tree.leaves(sh) for d in s.device_set} == {"tpu"}


# ------------------------------------------------------------------------------ compiles (libtpu)
@pytest.fixture(scope="module")
def tiny_report():
    from infinity_jax.tools import aot

    needs_libtpu()
    lines = []
    return aot.run(load_config(), "v5p:2x2x1", ("train", "sampler"), batch=8, echo=lines.append), lines


def test_report_fields(tiny_report):
    from infinity_jax.tools import aot

    r, lines = tiny_report
    t, s = r["train"], r["sampler"]
    assert r["topology"] == "v5p:2x2x1" and r["chips"] == 4 and r["fits"] is True
    assert t["chip"] == "v5p" and t["hbm_bytes"] == 95 * 2 ** 30 and t["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert t["state_bytes"]["params"] > 0 and t["state_bytes"]["opt_state"] >= 2 * t["state_bytes"]["params"] * 0.99
    m = t["memory"]
    assert m["arguments"] > 0 and m["temporaries"] > 0 and m["total"] >= m["arguments"] + m["temporaries"]
    assert t["fits"] is True and t["attention_impl"] == resolve_attention(load_config().model.attention_impl, "tpu") == "splash"
    # matmul FLOPs with loops counted: the analytic model count (3x forward) + the remat forward
    assert t["flops"]["model"] > 0 and t["flops"]["xla_cost_analysis"] > 0
    counted = t["flops"]["hlo_matmul"] + t["flops"]["pallas_kernels_analytic"]  # splash: kernels not in the HLO
    assert t["flops"]["pallas_kernels_analytic"] > 0
    assert t["flops"]["model"] <= counted <= 2 * t["flops"]["model"]  # remat: ~4/3
    assert set(t["collectives"]) == set(COLLECTIVES)
    assert t["collectives"]["all-gather"]["count"] > 0 and t["collectives"]["all-gather"]["bytes"] > 0
    assert t["loops"] and all(n == load_config().model.depth for _, n in t["loops"])
    rl = t["roofline"]
    assert rl["time_s"] > 0 and 0 < rl["mfu"] <= 1 and rl["bound"] in ("compute", "hbm", "ici")
    assert s["peak_bytes"] > s["param_bytes"] > 0 and s["kv_cache_bytes"] > 0 and s["fits"] is True
    assert s["scales"] == len(s["per_scale"]) == 3 and s["guidance"] and s["estimate_seconds_per_image"] > 0
    # splash: each scale's kernel FLOPs (2 rows x its queries x its visible keys) beside the HLO count
    mcfg = aot.model_config(aot.compile_config(load_config()))
    sched = [tuple(p["grid"]) for p in s["per_scale"]]
    pairs = np.cumsum([h * w for h, w in sched]) * [h * w for h, w in sched]
    kernel = [p["flops"]["pallas_kernels_analytic"] for p in s["per_scale"]]
    assert kernel == pytest.approx(list(2 * mcfg.depth * 4 * mcfg.embed_dim * pairs))
    text = "\n".join(lines)
    assert "ESTIMATE" in text and "95.00 GiB (v5p): fits" in text and "official Infinity-2B: 0.8 s" in text
    json.dumps(r, default=str)  # the --json output


def test_sampler_with_bfloat16_blocks_and_a_resident_text_encoder(tiny_report):
    """The pipeline's memory options: bfloat16 block parameters (``generate --param_dtype``) and the
    T5 encoder's parameters counted beside the sampler."""
    from infinity_jax.text.config import preset
    from infinity_jax.text.t5 import Model as T5
    from infinity_jax.tools import aot

    full = tiny_report[0]["sampler"]
    lines = []
    r = aot.run(load_config(), "v5p:2x2x1", ("sampler",), echo=lines.append, sampler_param_dtype="bfloat16",
                sampler_text_encoder="small")["sampler"]
    assert full["param_dtype"] == "float32" and r["param_dtype"] == "bfloat16"
    assert full["text_encoder_bytes"] == 0 and full["total_bytes"] == full["peak_bytes"]
    # the blocks hold most of the parameters: bfloat16 stores them in about half the bytes
    assert 0.45 * full["param_bytes"] < r["param_bytes"] < 0.75 * full["param_bytes"]
    t5 = nnx.eval_shape(lambda: T5(preset("small"), rngs=nnx.Rngs(0)))
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nnx.state(t5, nnx.Param)))
    assert r["text_encoder_bytes"] == 2 * n
    assert r["total_bytes"] == r["peak_bytes"] + r["text_encoder_bytes"] and r["fits"] is True
    text = "\n".join(lines)
    assert "block parameters bfloat16" in text and "text encoder small resident" in text
    # only the last scale's program compiled (the earlier ones traced for shapes): the same program
    last = aot.run(load_config(), "v5p:2x2x1", ("sampler",), echo=lines.append, sampler_last_scales=1)["sampler"]
    assert last["scales_compiled"] == 1 and [p["scale"] for p in last["per_scale"]] == [full["scales"] - 1]
    assert last["per_scale"][0]["memory"] == full["per_scale"][-1]["memory"]
    assert last["estimate_seconds_per_image"] is None and "compiled 1 of 3 scale programs" in lines[-1]


def test_cli_exits_nonzero_when_it_does_not_fit(tmp_path):
    needs_libtpu()
    cmd = [sys.executable, "-m", "infinity_jax.tools.aot", f"--config={CONFIG_FILE}:size=tiny,runlocal=True",
           "--config.tokenizer.in_step=False", "--topology=v5e:1x1", "--parts=train", "--hbm_gib=0.001",
           f"--json={tmp_path / 'r.json'}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 3, p.stderr[-3000:]
    assert "error: does not fit: train needs" in p.stderr and "DOES NOT FIT" in p.stdout
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["fits"] is False and r["train"]["chip"] == "v5e" and r["train"]["hbm_bytes"] == 0.001 * 2 ** 30
    bad = subprocess.run(cmd[:4] + ["--topology=v9-8"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "unknown TPU topology 'v9-8'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("impl", SUBQUADRATIC_ATTENTION)
def test_train_step_temporaries_grow_subquadratically(impl):
    """Train-step temporaries from 341 to 1365 tokens (4x): (B,H,L,L) attention scores grow them
    faster than L (measured: L^1.43 with ``reference``); without L x L tensors the growth is about
    linear (L^0.97 with ``xla``)."""
    from infinity_jax.tools import aot

    devices = tpu_devices("v5p:2x2x1")
    temps = {}
    for n in (5, 6):
        sched = tuple((2 ** i, 2 ** i) for i in range(n))  # 1x1 ... 16x16 (341 tokens) / 32x32 (1365)
        c = aot.compile_config(load_config(schedule=sched, model__num_heads=8), batch=4, attention_impl=impl)
        r = aot.compile_train(c, devices)
        assert r["attention_impl"] == impl
        temps[r["tokens"]] = r["memory"]["temporaries"]
    (l1, t1), (l2, t2) = sorted(temps.items())
    exponent = np.log(t2 / t1) / np.log(l2 / l1)
    assert exponent < 1.2, f"temporaries {t1} -> {t2} bytes for {l1} -> {l2} tokens: L^{exponent:.2f}"
