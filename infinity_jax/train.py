r"""Train Infinity.

  python -m infinity_jax.train --config configs/infinity.py:size=layer12,runlocal=True --workdir /tmp/run
  python -m infinity_jax.train --config configs/infinity.py:size=2b,pn=0.06M --config.batch_size=512 \
      --config.data.path=/data/shards --workdir gs://bucket/run

Running the same command again resumes from the latest good checkpoint in ``--workdir``.
Multi-host: set ``INFINITY_JAX_DISTRIBUTED=1`` (see launch/README.md) so that
``jax.distributed.initialize()`` runs before anything else touches the devices.
"""
from __future__ import annotations

import logging
import os
import pathlib
import sys

from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

from infinity_jax import config_files

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (file.py:args).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and TensorBoard logs.")


def _check_workdir(workdir: str | None) -> str | None:
    if not workdir:
        return None
    if "://" in workdir:
        return workdir
    p = pathlib.Path(workdir).expanduser().absolute()
    if not p.parent.is_dir():
        raise FileNotFoundError(f"the parent folder of --workdir ({p.parent}) does not exist")
    if p.exists() and not p.is_dir():
        raise FileExistsError(f"--workdir {p} exists and is not a folder")
    return str(p)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # deferred so that --help and flag errors need no jax (0.2 s instead of 7 s)
    from infinity_jax.training.trainer import maybe_initialize_distributed  # noqa: PLC0415

    maybe_initialize_distributed()
    import jax  # noqa: PLC0415

    from infinity_jax.data.bucketing import EmptyDatasetError  # noqa: PLC0415
    from infinity_jax.schedules import ScheduleError  # noqa: PLC0415
    from infinity_jax.state_dict import CheckpointMismatchError, CheckpointValueError  # noqa: PLC0415
    from infinity_jax.training.checkpoint import CheckpointWriteError, NoGoodCheckpointError  # noqa: PLC0415
    from infinity_jax.training.loop import DivergedError  # noqa: PLC0415
    from infinity_jax.training.trainer import ConfigError, Trainer  # noqa: PLC0415
    from infinity_jax.training.workdir_lock import WorkdirLockedError  # noqa: PLC0415

    try:  # a config file that failed to load raises on first use
        config = _CONFIG.value
        if config is not None:
            config.keys()
    except Exception as e:  # noqa: BLE001 - a missing or failing config file: one line
        print(f"error: {_config_error(sys.argv, e)}", file=sys.stderr)
        sys.exit(2)
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/infinity.py:size=tiny,runlocal=True")
    logging.getLogger().setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)
    for noisy in ("absl", "orbax", "jax._src", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        workdir = _check_workdir(_WORKDIR.value)
        if workdir and jax.process_index() == 0 and "://" not in workdir:
            os.makedirs(workdir, exist_ok=True)
        if config.compilation_cache:
            jax.config.update("jax_compilation_cache_dir", config.compilation_cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        trainer = Trainer(config, workdir)
        trainer.train()
        if trainer.stopped_by:  # SIGTERM / SIGINT: checkpoint saved, the same command resumes
            sys.exit(128 + int(trainer.stopped_by))
    except (ConfigError, EmptyDatasetError, ScheduleError, FileNotFoundError, FileExistsError,
            CheckpointMismatchError, CheckpointValueError, NoGoodCheckpointError, WorkdirLockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except CheckpointWriteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # read-only or full disk, missing permissions: name the file
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e} (check the disk space and permissions of --workdir)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted before training started (nothing to save)", file=sys.stderr)
        sys.exit(130)
    except DivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)


def _config_error(argv: list[str], err: Exception) -> str:
    """A one-paragraph message for a bad --config file, argument or --config.key override."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv[:-1]:
        spec = argv[argv.index("--config") + 1]
    if spec is None:
        return str(err).splitlines()[0]
    try:
        config = config_files.load(spec)
    except config_files.ConfigError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - the config file itself fails
        return f"cannot load --config {spec}: {type(e).__name__}: {e}"
    bad = []
    for a in argv:
        if a.startswith("--config."):
            key = a[len("--config."):].split("=", 1)[0]
            node = config
            for part in key.split("."):
                try:
                    node = node[part]
                except (KeyError, TypeError, AttributeError):
                    bad.append(key)
                    break
    if bad:
        return f"unknown config key(s) {', '.join(bad)}; see {spec.partition(':')[0]} for the valid keys"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else repr(err)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
        print(f"error: {_config_error(argv, e)}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
