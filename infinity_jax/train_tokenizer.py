r"""Train a BSQ-VAE tokenizer (the official Infinity repository does not ship this).

  python -m infinity_jax.train_tokenizer --config configs/tokenizer.py:preset=shapes --workdir /tmp/tok
  python -m infinity_jax.train_tokenizer --config configs/tokenizer.py:preset=official \
      --config.data.path=/data/shards --config.loss.perceptual.weight=0.1 --config.loss.gan.weight=0.1 \
      --workdir /w/tok

Losses: reconstruction (L1 / L2), commitment, the BSQ entropy regulariser (per-sample minus
codebook entropy), optional early-scale reconstruction, an optional random-feature perceptual
proxy (no pretrained VGG/LPIPS is available offline) and an optional hinge GAN with a PatchGAN
discriminator. Same Grain pipeline, Orbax checkpoints and training loop as ``infinity_jax.train``:
running the same command again resumes; SIGTERM / SIGINT save and exit with ``128 + signal``. The
result, ``WORKDIR/tokenizer.safetensors`` (official state_dict names), is what
``--config.tokenizer.checkpoint`` of the Infinity trainer expects.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Tokenizer config file (configs/tokenizer.py:args).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and the exported tokenizer.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/tokenizer.py:preset=shapes")
    logging.getLogger().setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)
    for noisy in ("absl", "orbax", "jax._src", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # deferred so that --help and flag errors need no jax (0.2 s instead of 7 s)
    from infinity_jax.data.bucketing import EmptyDatasetError  # noqa: PLC0415
    from infinity_jax.training.checkpoint import CheckpointWriteError, NoGoodCheckpointError  # noqa: PLC0415
    from infinity_jax.training.loop import DivergedError  # noqa: PLC0415
    from infinity_jax.training.tokenizer_trainer import TokenizerConfigError, TokenizerTrainer  # noqa: PLC0415
    from infinity_jax.training.trainer import ConfigError  # noqa: PLC0415
    from infinity_jax.training.workdir_lock import WorkdirLockedError  # noqa: PLC0415

    workdir = _WORKDIR.value
    try:
        if workdir and "://" not in workdir:
            workdir = os.path.abspath(os.path.expanduser(workdir))
            parent = os.path.dirname(workdir)
            if not os.path.isdir(parent):
                raise FileNotFoundError(f"the parent folder of --workdir ({parent}) does not exist")
            os.makedirs(workdir, exist_ok=True)
        trainer = TokenizerTrainer(config, workdir)
        last = trainer.train()
        if trainer.stopped_by:  # SIGTERM / SIGINT: checkpoint saved, the same command resumes
            sys.exit(128 + int(trainer.stopped_by))
    except (TokenizerConfigError, ConfigError, EmptyDatasetError, FileNotFoundError, NoGoodCheckpointError,
            WorkdirLockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except CheckpointWriteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except DivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    if "eval/psnr" in last:
        print(f"held-out PSNR {last['eval/psnr']:.2f} dB")
    if workdir:
        print(f"wrote {os.path.join(workdir, 'tokenizer.safetensors')}")


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
