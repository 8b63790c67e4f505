"""One official training step (gradients, clipping, AdamW, decay) recomputed through the training code.

The golden (official-tiny ``golden_train_step.npz``) holds the official gradients before clipping,
the parameters after one AdamW step and each parameter's decay coefficient. Tolerances: gradients
within 2e-4 of each tensor's largest |gradient|; parameters after the step within 1e-5 wherever the
reference gradient is not tiny (|g| > 1e-5 x the tensor's max: below that a first AdamW step,
lr * g / (|g| + eps), follows the gradient's fp32 rounding; see ``fixture_train_step``).
"""
import json

import numpy as np
import optax
import pytest

from infinity_jax.transformer.attention import CPU_IMPLEMENTATIONS
from infinity_jax.tools.fixture_train_step import (TrainStepSettingsError, decay_coefficients, fixture_optimizer,
                                                   fixture_params, read_settings, run_train_step, to_official,
                                                   train_step_inputs)

#: attention implementations the step is checked with (``InfinityConfig.attention_impl``)
IMPLS = CPU_IMPLEMENTATIONS
GRAD_RTOL = 2e-4
UPDATE_ATOL = 1e-5
TINY_RTOL = 1e-5


@pytest.fixture(scope="module")
def golden(official_tiny) -> dict:
    return dict(np.load(official_tiny / "golden_train_step.npz"))


@pytest.fixture(scope="module")
def step_inputs(official_tiny):
    """The step's teacher-forced input and labels: the fixture image through the project's tokenizer."""
    return train_step_inputs(official_tiny)


def _names(golden, prefix):
    return sorted(k[len(prefix):] for k in golden if k.startswith(prefix))


def _not_tiny(g):
    return np.abs(g) > TINY_RTOL * np.abs(g).max()


def _worst_update_error(golden, params_after) -> float:
    worst = 0.0
    for name in _names(golden, "param_after/"):
        ref, got, g = golden["param_after/" + name], params_after[name], golden["grad/" + name]
        assert got.shape == ref.shape, name
        keep = _not_tiny(g) if np.abs(g).max() > 0 else np.ones(g.shape, bool)  # zero gradient: no update at all
        worst = max(worst, float(np.abs(got.astype(np.float64) - ref)[keep].max()))
    return worst


@pytest.mark.parametrize("scan_blocks", [False, True], ids=["blocks", "scan"])
@pytest.mark.parametrize("impl", IMPLS)
def test_train_step_matches_official(official_tiny, golden, step_inputs, impl, scan_blocks):
    ours = run_train_step(official_tiny, *step_inputs, overrides=dict(scan_blocks=scan_blocks, attention_impl=impl))
    assert set(golden) <= set(ours), sorted(set(golden) - set(ours))
    # gradients before clipping, relative to each tensor's largest |gradient|
    grad_names = _names(golden, "grad/")
    assert len(grad_names) == json.loads((official_tiny / "train_step.json").read_text())["n_params"]
    worst_grad = 0.0
    for name in grad_names:
        ref, got = golden["grad/" + name], ours["grad/" + name]
        assert got.shape == ref.shape, name
        top = float(np.abs(ref).max())
        if top == 0:  # cfg_uncond: unused without caption dropout
            np.testing.assert_array_equal(got, 0.0, err_msg=name)
            continue
        err = float(np.abs(got.astype(np.float64) - ref).max()) / top
        assert err <= GRAD_RTOL, (name, err)
        worst_grad = max(worst_grad, err)
    # parameters after one clipped AdamW step
    worst_update = _worst_update_error(golden, {n: ours["param_after/" + n] for n in _names(golden, "param_after/")})
    assert worst_update <= UPDATE_ATOL, worst_update
    # the tiny-gradient exclusion leaves almost every element compared
    n_all = sum(golden["grad/" + n].size for n in grad_names)
    n_tiny = sum(int((~_not_tiny(golden["grad/" + n])).sum()) for n in grad_names
                 if np.abs(golden["grad/" + n]).max() > 0)
    assert n_tiny < 0.01 * n_all, (n_tiny, n_all)
    # the official parameter groups' decay coefficients
    for name in _names(golden, "weight_decay/"):
        assert float(ours["weight_decay/" + name]) == float(golden["weight_decay/" + name]), name
    np.testing.assert_allclose(ours["loss"], golden["loss"], rtol=1e-5)
    np.testing.assert_allclose(ours["grad_norm"], golden["grad_norm"], rtol=1e-5)
    np.testing.assert_allclose(ours["clip_value"], golden["clip_value"], rtol=1e-7)
    print(f"{impl} scan_blocks={scan_blocks}: worst gradient error {worst_grad:.3g} of the tensor max, "
          f"worst update error {worst_update:.3g}")


def test_optimizer_on_official_gradients_needs_clipping_and_decay_mask(official_tiny, golden):
    """The project's optimizer applied to the official gradients gives the official step, and the
    comparison above would see a missing clip. (One step's decay, lr * wd * |p| ~ 5e-6 |p|, is
    below the update tolerance: the decay mask is checked through its coefficients.)"""
    s = read_settings(official_tiny)
    md, params = fixture_params(official_tiny, s)
    _, grads = fixture_params(official_tiny, s, state_dict={n: golden["grad/" + n] for n in _names(golden, "grad/")})
    assert decay_coefficients(md, params, s["wd"]) == {n: golden["weight_decay/" + n]
                                                       for n in _names(golden, "weight_decay/")}

    def step(settings):
        tx = fixture_optimizer(settings)
        updates, _ = tx.update(grads, tx.init(params), params)
        return to_official(md, optax.apply_updates(params, updates))

    assert _worst_update_error(golden, step(s)) <= UPDATE_ATOL
    assert _worst_update_error(golden, step(dict(s, clip=0.0))) > 10 * UPDATE_ATOL  # no clipping


def test_fixture_without_train_step_settings(official_tiny, tmp_path):
    for f in official_tiny.iterdir():
        if f.name not in ("train_step.json", "golden_train_step.npz"):
            (tmp_path / f.name).symlink_to(f)
    assert read_settings(tmp_path) is None and run_train_step(tmp_path) == {}


@pytest.mark.parametrize("change, message", [
    (lambda j: j["optimizer"].update(step=2), "only a first step"),
    (lambda j: j["bitwise_self_correction"].update(noise_apply_strength=0.3), "makes the official step random"),
    (lambda j: j.pop("grad_clip"), "malformed settings"),
], ids=["later_step", "bit_flipping", "no_clip"])
def test_unreproducible_train_step_settings_are_one_line_errors(official_tiny, tmp_path, change, message):
    j = json.loads((official_tiny / "train_step.json").read_text())
    change(j)
    (tmp_path / "train_step.json").write_text(json.dumps(j))
    with pytest.raises(TrainStepSettingsError, match=message):
        read_settings(tmp_path)
