"""Metric plumbing: per-scale flattening, peak lookup for MFU, the stdout line, the JSONL file."""
import json

import numpy as np

from infinity_jax.training.metrics import MetricsLogger, format_line, peak_tflops, scalar_metrics
from infinity_jax.transformer.config import size_config
from infinity_jax.transformer.flops import train_flops


def test_train_metrics_flatten_and_format(tmp_path, capsys):
    m = scalar_metrics({"loss": np.float32(0.5), "per_scale_loss": np.array([0.7, 0.6, 0.5])})
    assert m == {"loss": 0.5, "per_scale_loss/00": 0.7, "per_scale_loss/01": 0.6,
                 "per_scale_loss/02": 0.5}
    assert peak_tflops("TPU v5p") == 459.0 and peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("cpu") is None and peak_tflops("cpu", 2.5) == 2.5
    m.update(step_time=0.5, images_per_s=8.0, tokens_per_s=4168.0, tflops_per_device=0.2, mfu=0.1,
             bit_accuracy=0.6, grad_norm=1.0, lr=1e-4)
    line = format_line(7, m)
    assert "step       7" in line and "MFU 10.0%" in line and "500 ms" in line and "scales 0.700 0.600 0.500" in line
    log = MetricsLogger(str(tmp_path), total_steps=10, tensorboard=False, progress=True)
    log.write(7, m)
    log.close()
    assert "loss 0.5000" in capsys.readouterr().out  # no TTY under pytest: plain lines, no bar
    rec = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert rec["step"] == 7 and rec["mfu"] == 0.1


def test_train_analytic_flops_scale_with_the_schedule():
    cfg = size_config("layer12")
    small = train_flops(cfg, ((1, 1, 1), (1, 2, 2)), 77)
    big = train_flops(cfg, ((1, 1, 1), (1, 2, 2), (1, 4, 4)), 77)
    assert big > small > 0
