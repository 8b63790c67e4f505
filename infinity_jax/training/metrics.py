"""Per-step training metrics: throughput and MFU from analytic FLOPs, to stdout, TensorBoard, JSONL.

MFU follows MaxText: ``TFLOP/s/device = analytic train FLOPs per step / step time / devices`` and
``MFU = TFLOP/s/device / peak``. The analytic count is ``infinity_jax.transformer.flops.train_flops``
(matmuls only, 3x forward) for the step's schedule and padded caption length; the frozen tokenizer
and text encoder are not counted. The peak is ``config.log.peak_tflops`` or, when 0, looked up
from the device kind (bf16 dense peaks); MFU is omitted when unknown (CPU).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import time
from typing import Any, Callable, Mapping

import numpy as np
from tqdm import tqdm

from infinity_jax.tools.tpu import chip_for_device_kind

log = logging.getLogger(__name__)

#: bf16 dense peak TFLOP/s of GPUs, by a substring of ``jax.devices()[0].device_kind``; TPU chips
#: come from the one chip table, :data:`infinity_jax.tools.tpu.CHIPS`.
PEAK_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 125.0))


def peak_tflops(device_kind: str, configured: float = 0.0) -> float | None:
    if configured and configured > 0:
        return float(configured)
    chip = chip_for_device_kind(device_kind)
    if chip is not None:
        return chip.peak_tflops
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return value
    return None


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flatten the step's metrics (arrays (K,) become ``name/scale_k``)."""
    out = {}
    for k, v in metrics.items():
        a = np.asarray(v)
        if a.ndim == 0:
            out[k] = float(a)
        else:
            for i, x in enumerate(a.reshape(-1)):
                out[f"{k}/{i:02d}"] = float(x)
    return out


def drop_records_after(path: str, step: int) -> None:
    """Rewrite ``metrics.jsonl`` without the records past ``step`` (a resumed run writes them again)
    and without a last line cut short by a kill."""
    if not os.path.exists(path):
        return
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
                keep = int(record.get("step", 0)) <= step
            except (ValueError, TypeError, AttributeError):
                keep = False
            if keep:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
        log.info("metrics.jsonl: dropped %d records past step %d (they are written again)", dropped, step)


class MetricsLogger:
    """Writes every step's metrics (process 0 only): stdout, ``metrics.jsonl``, TensorBoard, tqdm."""

    def __init__(self, workdir: str | None, *, total_steps: int, start_step: int = 0, tensorboard: bool = True,
                 progress: bool = True, is_primary: bool = True, print_every: int = 1,
                 format_fn: Callable[[int, Mapping[str, float]], str] | None = None, tag_prefix: str = "",
                 desc: str | None = None):
        """``format_fn(step, metrics)`` makes the printed line (default :func:`format_line`);
        ``tag_prefix`` is put before TensorBoard tags that have no ``/``; ``desc`` labels the bar."""
        self.is_primary = is_primary
        self.format_fn = format_fn or format_line
        self.tag_prefix = tag_prefix
        self.print_every = max(0, int(print_every))  # 0: no step lines
        self.jsonl = None
        self.tb = None
        self.bar = None
        if not is_primary:
            return
        if workdir:
            pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            drop_records_after(path, start_step)
            self.jsonl = open(path, "a", buffering=1)
            if tensorboard:
                try:
                    from tensorboardX import SummaryWriter  # noqa: PLC0415

                    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
                except ImportError:
                    log.warning("tensorboardX is not installed: no TensorBoard logs")
        if progress and sys.stdout.isatty():
            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, unit="step", desc=desc)

    def write(self, step: int, metrics: Mapping[str, float], line: str | None = None) -> None:
        """Record ``metrics`` of ``step``; ``line``, when given, is printed as is (and the bar left alone)."""
        if not self.is_primary:
            return
        record = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        if self.jsonl:
            self.jsonl.write(json.dumps(record) + "\n")
        if self.tb:
            for k, v in metrics.items():
                self.tb.add_scalar(k if not self.tag_prefix or "/" in k else f"{self.tag_prefix}/{k}", v, step)
        if line is not None:
            self.text(line)
            return
        line = self.format_fn(step, metrics)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(line.split("| ", 1)[-1][:120], refresh=False)
            if self.print_every and step % self.print_every == 0:
                self.bar.write(line)
        elif self.print_every and step % self.print_every == 0:
            print(line, flush=True)

    def text(self, msg: str) -> None:
        if not self.is_primary:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb:
            self.tb.flush()
            self.tb.close()
        if self.jsonl:
            self.jsonl.close()


def format_line(step: int, m: Mapping[str, float]) -> str:
    parts = [f"step {step:>7d}", f"| loss {m.get('loss', float('nan')):.4f}",
             f"acc {m.get('bit_accuracy', float('nan')):.4f}", f"gnorm {m.get('grad_norm', float('nan')):.3f}",
             f"lr {m.get('lr', float('nan')):.3e}"]
    if "step_time" in m:
        parts.append(f"{m['step_time'] * 1e3:.0f} ms")
        parts.append(f"{m.get('images_per_s', 0):.1f} img/s")
        parts.append(f"{m.get('tokens_per_s', 0):,.0f} tok/s")
        parts.append(f"{m.get('tflops_per_device', 0):.3f} TFLOP/s/dev")
        if "mfu" in m:
            parts.append(f"MFU {100 * m['mfu']:.1f}%")
    per = [v for k, v in sorted(m.items()) if k.startswith("per_scale_loss/")]
    if per:
        parts.append("scales " + " ".join(f"{v:.3f}" for v in per))
    if m.get("data/skipped_total"):
        parts.append(f"skipped {int(m['data/skipped_total'])}")
    return " ".join(parts)
