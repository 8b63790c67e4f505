r"""Throughput of the real training loop (``Trainer.train``) and per-device memory on a simulated mesh.

  python benchmarks/train_loop.py                               # official-tiny and layer12, 256x256, batch 2
  python benchmarks/train_loop.py --sizes layer12 --batch 4 --steps 6 --peak_tflops 2.0
  python benchmarks/train_loop.py --skip_memory                 # timing only

Timing: each size runs ``python -m infinity_jax.train``'s trainer (synthetic 256x256 images, random
caption features of ``--text_len`` tokens, a randomly initialised tokenizer of the official width, BSC,
AdamW...) for ``--steps`` steps on this machine's default devices; the per-step metrics the trainer
writes (step time, images/s, tokens/s, TFLOP/s per device from the analytic FLOPs, MFU when
``--peak_tflops`` or a known accelerator gives the peak) are summarised as medians over the steps
after the first. Step time includes the frozen tokenizer, which the FLOP count leaves out.

Memory: the same configs are compiled (not run) in a subprocess with ``--mesh_devices`` simulated
CPU devices on a (data 2, fsdp 2, tensor 2) mesh and on fsdp only; ``compiled.memory_analysis()``
gives the per-device argument / output / temporary bytes, next to the parameter bytes per device.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

from infinity_jax import config_files

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZES = {
    # official-tiny: the reference fixture's transformer (depth 2, width 128, T5 width 2048) and tokenizer (base 32)
    "official-tiny": ("size=tiny", {"tokenizer.base_ch": 32}),
    "layer12": ("size=layer12", {"tokenizer.base_ch": 128}),
}


def make_config(size: str, args):
    arg, extra = SIZES[size]
    c = config_files.load(f"{ROOT / 'configs' / 'infinity.py'}:{arg},pn={args.pn},data=synthetic,text=random")
    c.templates = (1.0,)
    c.model.dtype = args.dtype
    c.text.max_len = args.text_len
    c.data.synthetic.update(num_records=max(64, args.batch * (args.steps + 2)), sizes=((256, 256),))
    c.data.update(num_threads=2, prefetch=2)
    c.batch_size = args.batch
    c.total_steps = args.steps
    c.checkpoint.update(every=10 ** 9, async_save=False)
    c.log.update(tensorboard=False, progress=False, peak_tflops=args.peak_tflops)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    return config_files.apply_overrides(c, extra)


def timing(size: str, args) -> dict:
    import jax  # noqa: PLC0415

    from infinity_jax.training.trainer import Trainer  # noqa: PLC0415

    config = make_config(size, args)
    with tempfile.TemporaryDirectory() as work:
        tr = Trainer(config, work)
        tr.train()
        rows = [json.loads(x) for x in (pathlib.Path(work) / "metrics.jsonl").read_text().splitlines()]
    rows = rows[1:] if len(rows) > 1 else rows  # the first step pays for warm-up
    med = lambda k: statistics.median(r[k] for r in rows) if rows and k in rows[0] else float("nan")
    return {"size": size, "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
            "batch": args.batch, "tokens_per_image": tr.buckets[0].seq_len, "compile_s": tr.compile_info["seconds"],
            "step_time_s": med("step_time"), "images_per_s": med("images_per_s"), "tokens_per_s": med("tokens_per_s"),
            "tflops_per_device": med("tflops_per_device"), "mfu": med("mfu") if "mfu" in rows[0] else None,
            "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"]}


def memory(size: str, args) -> list[dict]:
    import jax  # noqa: PLC0415

    from infinity_jax.sharding import make_mesh  # noqa: PLC0415
    from infinity_jax.training.trainer import Trainer  # noqa: PLC0415

    config = make_config(size, args)
    config.batch_size = -(-max(args.batch, 8) // 8) * 8  # divisible by the data x fsdp shards of both meshes
    out = []
    n = jax.device_count()
    for shape in ({"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": n}):
        tr = Trainer(config, None, mesh=make_mesh(shape))
        m = tr.compiled_step(0).memory_analysis()
        total, per_dev = tr.md.param_bytes()
        out.append({"size": size, "mesh": shape, "batch": config.batch_size, "param_bytes_total": total,
                    "param_bytes_per_device": per_dev, "argument_bytes": m.argument_size_in_bytes,
                    "output_bytes": m.output_size_in_bytes, "alias_bytes": m.alias_size_in_bytes,
                    "temp_bytes": m.temp_size_in_bytes})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="official-tiny,layer12")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--pn", default="0.06M")
    ap.add_argument("--text_len", type=int, default=77)
    ap.add_argument("--dtype", default="float32", help="compute dtype of the blocks (float32 or bfloat16)")
    ap.add_argument("--peak_tflops", type=float, default=0.0, help="peak TFLOP/s per device for MFU")
    ap.add_argument("--mesh_devices", type=int, default=8)
    ap.add_argument("--skip_memory", action="store_true")
    ap.add_argument("--skip_timing", action="store_true")
    ap.add_argument("--memory_only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = args.sizes.split(",")
    if args.memory_only:
        print("MEMORY " + json.dumps([r for s in sizes for r in memory(s, args)]))
        return
    if not args.skip_timing:
        print(f"{'size':>14} {'batch':>5} {'tokens':>6} {'compile s':>9} {'step s':>8} {'img/s':>7} {'tokens/s':>9} "
              f"{'TFLOP/s/dev':>11} {'MFU':>6}  loss first->last")
        for s in sizes:
            r = timing(s, args)
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
            print(f"{s:>14} {r['batch']:>5} {r['tokens_per_image']:>6} {r['compile_s']:>9.1f} {r['step_time_s']:>8.3f} "
                  f"{r['images_per_s']:>7.2f} {r['tokens_per_s']:>9,.0f} {r['tflops_per_device']:>11.4f} {mfu:>6}  "
                  f"{r['loss_first']:.4f}->{r['loss_last']:.4f}   [{r['devices']} x {r['device_kind']}]", flush=True)
    if not args.skip_memory:
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={args.mesh_devices}")
        cmd = [sys.executable, __file__, "--memory_only", "--sizes", args.sizes, "--batch", str(args.batch),
               "--pn", args.pn, "--text_len", str(args.text_len), "--dtype", args.dtype]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode:
            sys.exit(p.stderr[-4000:])
        rows = json.loads(p.stdout.split("MEMORY ", 1)[1].splitlines()[0])
        mib = 2 ** 20
        print(f"\nper-device memory on {args.mesh_devices} simulated CPU devices (compiled.memory_analysis(), MiB):")
        print(f"{'size':>14} {'mesh':>28} {'batch':>5} {'params/dev':>10} {'params tot':>10} {'args':>8} {'outputs':>8} "
              f"{'aliased':>8} {'temps':>8}")
        for r in rows:
            print(f"{r['size']:>14} {json.dumps(r['mesh']):>28} {r['batch']:>5} {r['param_bytes_per_device'] / mib:>10.1f} "
                  f"{r['param_bytes_total'] / mib:>10.1f} {r['argument_bytes'] / mib:>8.1f} {r['output_bytes'] / mib:>8.1f} "
                  f"{r['alias_bytes'] / mib:>8.1f} {r['temp_bytes'] / mib:>8.1f}")


if __name__ == "__main__":
    main()
