"""Helpers of the training tests: the test config, CLI runs of the trainer, metric files."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from infinity_jax import config_files

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_FILE = ROOT / "configs" / "infinity.py"

#: Images of the ``corrupt_shards`` fixture written truncated (header readable, pixels not).
CORRUPT = (3, 11, 17, 25, 33)

#: On top of ``configs/infinity.py:size=tiny,runlocal=True``: a smaller caption side, fp32, no
#: TensorBoard (its import is slow), no tqdm.
TEST_OVERRIDES = {
    "model.text_channels": 32,
    "model.text_maxlen": 16,
    "text.max_len": 8,
    "log.tensorboard": False,
    "log.progress": False,
    "data.num_threads": 2,
}


def load_config(arg: str = "size=tiny,runlocal=True", **overrides):
    """``configs/infinity.py:arg`` with :data:`TEST_OVERRIDES` and ``overrides`` (``a__b`` for ``a.b``)."""
    return config_files.load(f"{CONFIG_FILE}:{arg}",
                             {**TEST_OVERRIDES, **{k.replace("__", "."): v for k, v in overrides.items()}})


def cli_args(overrides: dict) -> list[str]:
    out = []
    for k, v in {**TEST_OVERRIDES, **overrides}.items():
        if isinstance(v, (tuple, list)):
            v = "(" + ",".join(repr(x) if not isinstance(x, (tuple, list)) else "(" + ",".join(map(str, x)) + ",)"
                               for x in v) + ",)"
        out.append(f"--config.{k}={v}")
    return out


#: LLVM optimisation off: compiling the step is ~3x faster on CPU and every run of a test uses the same
#: flags (equivalence and resume compare runs made with identical flags).
FAST_COMPILE = "--xla_backend_optimization_level=0"


def subprocess_env(devices: int = 1, **extra) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def train_command(workdir, overrides: dict, arg: str = "size=tiny,runlocal=True") -> list[str]:
    return [sys.executable, "-m", "infinity_jax.train", f"--config={CONFIG_FILE}:{arg}", f"--workdir={workdir}",
            *cli_args(overrides)]


def run_train(workdir, overrides: dict, *, timeout: float = 300, devices: int = 1, check: bool = True,
              arg: str = "size=tiny,runlocal=True") -> subprocess.CompletedProcess:
    p = subprocess.run(train_command(workdir, overrides, arg), env=subprocess_env(devices), cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"training failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}")
    return p


def read_metrics(workdir) -> dict[int, dict]:
    """step -> metrics (the last record of each step: a resumed run rewrites the steps after the checkpoint)."""
    out = {}
    for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["step"]] = r
    return out


def make_image_folder(folder: pathlib.Path, n: int, *, corrupt=(), sizes=((64, 64),), seed: int = 0) -> pathlib.Path:
    """PNG images + an official-format captions JSONL; ``corrupt`` lists images written as garbage."""
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    from infinity_jax.data.synthetic import SyntheticSource  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    src = SyntheticSource(n, sizes=sizes, seed=seed)
    lines = []
    for i in range(n):
        ex = src[i]
        path = folder / "images" / f"{i:05d}.png"
        if i in corrupt:
            Image.fromarray(ex["image"]).save(path)
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3])  # truncated PNG: header readable, pixels not
        else:
            Image.fromarray(np.asarray(ex["image"])).save(path)
        h, w = ex["image"].shape[:2]
        lines.append(json.dumps({"image_path": f"images/{i:05d}.png", "h_div_w": h / w,
                                 "long_caption": ex["long_caption"] + ". It is a test image.",
                                 "long_caption_type": "synthetic", "text": ex["text"]}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder
