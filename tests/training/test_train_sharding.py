"""Sharded training equals single-device training; fsdp shards parameters and optimizer state.

Runs ``sharding_check.py`` in a subprocess with its own 8 simulated CPU devices.
"""
import json
import subprocess
import sys

from train_helpers import ROOT, subprocess_env


def test_train_step_sharded_equals_single_device_and_fsdp_bytes():
    p = subprocess.run([sys.executable, str(ROOT / "tests" / "training" / "sharding_check.py")],
                       env=subprocess_env(8), cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    r = json.loads(p.stdout.split("RESULT ", 1)[1].splitlines()[0])
    # parameters are initialised identically whatever the mesh
    assert r["init_max_abs_diff"] == 0.0
    # one step on (data 2, fsdp 2, tensor 2) == one step on one device (fp32)
    assert r["loss_abs_diff"] <= 1e-5, r
    assert r["params_max_abs_diff"] <= 1e-5, r
    assert r["opt_state_max_abs_diff"] <= 1e-5, r
    assert abs(r["grad_norm_1dev"] - r["grad_norm_2x2x2"]) <= 1e-5 * max(1.0, r["grad_norm_1dev"])
    assert "'fsdp'" in r["specs_2x2x2"]["['blocks']['ca']['mat_kv']['kernel']"]
    assert "'tensor'" in r["specs_2x2x2"]["['blocks']['ca']['mat_kv']['kernel']"]
    # fsdp=8: every device holds about 1/8 of the parameters and of the optimizer moments
    assert len(r["fsdp8_param_bytes_per_device"]) == 8
    assert r["fsdp8_param_fraction_max"] < 0.135, r
    assert r["fsdp8_opt_fraction_max"] < 0.135, r
    assert r["fsdp8_analytic"][1] == max(r["fsdp8_param_bytes_per_device"])
    print(f"\nloss 1 device {r['loss_1dev']:.8f} vs 2x2x2 {r['loss_2x2x2']:.8f} (|diff| {r['loss_abs_diff']:.2e}); "
          f"params max |diff| {r['params_max_abs_diff']:.2e}; fsdp=8 parameter bytes per device "
          f"{max(r['fsdp8_param_bytes_per_device']):,} of {r['fsdp8_param_total_bytes']:,} "
          f"({100 * r['fsdp8_param_fraction_max']:.2f} %, ideal 12.5 %)")
