r"""Convert official Infinity checkpoints into an infinity-jax checkpoint folder.

  python -m infinity_jax.convert --size 2b --transformer infinity_2b_reg.pth \
      --vae infinity_vae_d32reg.pth --t5 flan-t5-xl/ --out ckpt/infinity-2b
  python -m infinity_jax.convert --size 8b --transformer infinity_8b_weights/ \
      --vae infinity_vae_d56_f8_14_patchify.pth --mesh fsdp=-1 --out ckpt/infinity-8b

Every key is checked (missing, unexpected and mis-shaped keys are listed by name). Tensors are
read one at a time and placed straight into their shardings (``--mesh``), so an 8B or 20B model
is never whole on one device. ``--official_config`` takes a JSON file with the official
constructor arguments instead of ``--size`` (e.g. a fixture's manifest.json).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a command, so importing ``convert`` is free)."""
    flags.DEFINE_string("size", None, "Official model size: layer12..layer48, 2b, 8b, 20b.")
    flags.DEFINE_string("official_config", None, "JSON with official constructor args (or a fixture manifest).")
    flags.DEFINE_string("transformer", None, "Official transformer weights (.pth, .safetensors, folder, .npz).")
    flags.DEFINE_string("vae", None, "Official VAE weights (.pth, .safetensors, .npz).")
    flags.DEFINE_string("t5", None, "Optional Hugging Face Flan-T5 folder to bundle as the text encoder.")
    flags.DEFINE_string("out", None, "Output checkpoint folder (must be empty or new, unless --overwrite).")
    flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out folder (its whole content).")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Stored parameter dtype.")
    flags.DEFINE_string("mesh", None, "Mesh for loading, e.g. 'fsdp=-1' or 'data=1,fsdp=4,tensor=2'.")
    flags.DEFINE_float("cfg", 3.0, "Default guidance scale stored with the checkpoint.")
    flags.DEFINE_float("tau", 0.5, "Default temperature stored with the checkpoint.")
    flags.DEFINE_bool("trust_pickle", False, "Unpickle any object in .pth/.bin files (can run code: trusted files "
                      "only). Default: tensors only.")


def _parse_mesh(spec: str | None):
    if not spec:
        return None
    # deferred so that --help and flag errors need no jax (0.2 s instead of 7 s)
    from infinity_jax.sharding import make_mesh  # noqa: PLC0415

    shape = {}
    for part in spec.split(","):
        k, _, v = part.partition("=")
        shape[k.strip()] = int(v)
    return make_mesh(shape)


def convert(*, transformer_path, vae_path, out, size=None, official_config=None, t5=None, dtype="float32",
            mesh=None, sampling=None, trust_pickle=None, overwrite=False, log=print) -> pathlib.Path:
    """Library form of the command; returns the output folder.

    ``trust_pickle``: unpickle any object in ``.pth`` files (default: tensors only). A non-empty
    ``out`` is refused unless ``overwrite`` (then replaced whole). The bundle is written to a
    temporary sibling folder and renamed to ``out`` at the end: an interrupted run leaves nothing.
    """
    # deferred so that --help and flag errors need no jax (0.2 s instead of 7 s)
    import jax.numpy as jnp  # noqa: PLC0415

    from infinity_jax import bundle  # noqa: PLC0415
    from infinity_jax.state_dict import open_state_dict  # noqa: PLC0415
    from infinity_jax.tokenizer.convert import from_official as vae_from_official  # noqa: PLC0415
    from infinity_jax.tokenizer.convert import infer_config  # noqa: PLC0415
    from infinity_jax.tokenizer.vae import VAEConfig  # noqa: PLC0415
    from infinity_jax.transformer.config import InfinityConfig, size_config  # noqa: PLC0415
    from infinity_jax.transformer.convert import load as load_transformer  # noqa: PLC0415

    if (size is None) == (official_config is None):
        raise ValueError("give exactly one of --size and --official_config")
    out = pathlib.Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    vae_cfg = None
    if size is not None:
        tcfg = size_config(size)
    else:
        raw = json.loads(pathlib.Path(official_config).read_text())
        conf = raw.get("config", raw)
        # both read apply_spatial_patchify wherever the configuration states it (schedules.official_patchify)
        tcfg = InfinityConfig.from_official(conf)
        if "vae" in conf:
            vae_cfg = VAEConfig.from_official(conf)
    tcfg = tcfg.replace(scan_blocks=True, dtype="float32")
    t0 = time.perf_counter()
    log(f"reading transformer weights {transformer_path}")
    model = load_transformer(open_state_dict(transformer_path, trust_pickle=trust_pickle), tcfg,
                             dtype=jnp.dtype(dtype), mesh=mesh)
    log(f"  {sum(v.size for v in __import__('jax').tree.leaves(__import__('flax').nnx.state(model))):,} parameters "
        f"checked and loaded in {time.perf_counter() - t0:.1f} s")
    log(f"reading tokenizer weights {vae_path}")
    from infinity_jax.state_dict import load_state_dict  # noqa: PLC0415

    vstate = load_state_dict(vae_path, trust_pickle=trust_pickle)
    if vae_cfg is None:
        vae_cfg = infer_config(vstate, apply_spatial_patchify=tcfg.apply_spatial_patchify)
    if vae_cfg.codebook_dim != tcfg.codebook_dim:
        raise ValueError(f"the VAE has {vae_cfg.codebook_dim} bits per token but the transformer expects "
                         f"{tcfg.codebook_dim}: wrong VAE file for this model size?")
    vae = vae_from_official(vstate, vae_cfg)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        bundle.save(tmp, model, vae, text_encoder_folder=t5, sampling=sampling or {})
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {out}")
    return out


def _replace(tmp: pathlib.Path, out: pathlib.Path) -> None:
    """Rename the finished ``tmp`` folder to ``out`` (an existing ``out`` is moved away first, then removed)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()


def main(argv):
    del argv
    for name in ("transformer", "vae", "out"):
        if not getattr(FLAGS, name):
            sys.exit(f"error: --{name} is required (see --help)")
    for path in (FLAGS.transformer, FLAGS.vae, FLAGS.t5):
        if path and not pathlib.Path(path).exists():
            sys.exit(f"error: {path} does not exist")
    # deferred so that --help and flag errors need no jax (0.2 s instead of 7 s)
    from infinity_jax.state_dict import CheckpointMismatchError  # noqa: PLC0415

    try:
        convert(transformer_path=FLAGS.transformer, vae_path=FLAGS.vae, out=FLAGS.out, size=FLAGS.size,
                official_config=FLAGS.official_config, t5=FLAGS.t5, dtype=FLAGS.dtype, mesh=_parse_mesh(FLAGS.mesh),
                sampling={"cfg": FLAGS.cfg, "tau": FLAGS.tau, "top_k": 900, "top_p": 0.97},
                trust_pickle=FLAGS.trust_pickle or None, overwrite=FLAGS.overwrite)
    except CheckpointMismatchError as e:
        sys.exit(f"error: {e}")
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        sys.exit(f"error: {e}")


def run() -> None:
    """The ``infinity-convert`` console script."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
