"""``analyze``: power-law fits of a sweep (loss vs parameters, the compute frontier, bit error)."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from infinity_jax.scaling.files import as_path
from infinity_jax.scaling.fit import (bootstrap_power_law, fit_power_law, fit_simple_power_law, frontier,
                                      residual_bootstrap)
from infinity_jax.scaling.records import SweepData, records_of, load_sweep
from infinity_jax.scaling.report import plots, train_curves, write_tables

log = logging.getLogger("infinity_jax.scaling")


def _group_by_point(records, key="point"):
    groups: dict = {}
    for r in records:
        if r.get(key) is None:
            continue
        groups.setdefault(int(r[key]), []).append(r)
    return groups


def _final_records(records, plans):
    """Each size's record at the last step of its plan (sizes still training are left out)."""
    return [r for r in records if r["size"] in plans and int(r["step"]) == int(plans[r["size"]]["total_steps"])]


def _bootstrap_metric(data: SweepData, recs: list, metric: str, n_boot: int, seed: int = 0):
    """(n_boot, len(recs)) replicate means of ``metric``, resampling held-out images (paired: the
    same resampled image set for every record, since every size sees the same held-out set)."""
    arrs = [data.samples.get((r["size"], int(r["step"])), {}).get(metric) for r in recs]
    if n_boot <= 0 or any(a is None for a in arrs):
        return None
    n = min(len(a) for a in arrs)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    return np.stack([np.asarray(a[:n], np.float64)[idx].mean(axis=1) for a in arrs], axis=1)


def _fit(x, y, reps, sigma=None):
    f = fit_power_law(x, y, sigma=sigma)
    if reps is None:
        reps = residual_bootstrap(f, 200) if f.dof > 0 else None
        f.boot_kind = "residual" if reps is not None else "none"
    else:
        f.boot_kind = "held-out images (paired)"
    if reps is not None:
        f2 = bootstrap_power_law(f, x, reps, sigma=sigma)
        f2.boot_kind = f.boot_kind
        f = f2
    return f


def analyze(workdir: str, out: str | None = None, metric: str = "loss", n_boot: int = 200) -> dict:
    """Fits, plots and tables of a sweep (see the ``infinity_jax.scaling`` docstring). Returns the fits as a dict."""
    data = load_sweep(workdir, metric)
    out = out or f"{workdir}/analysis"
    as_path(out).mkdir(parents=True, exist_ok=True)
    recs = data.records
    fits: dict[str, Any] = {"metric": metric, "loss_vs_params": [], "loss_vs_compute": None,
                            "compute_optimal": None, "bit_error_vs_params": None}
    sizes_order = sorted(data.plan, key=lambda n: data.plan[n]["params"])

    # loss vs parameters at every compute point with >= 3 sizes; iso_steps: also at the last step
    groups = _group_by_point(recs)
    cands = [(f"compute point {k} (C = {g[0]['nominal_compute']:.3g} FLOPs)", k, g) for k, g in sorted(groups.items())]
    if any(r.get("point") is None for r in recs):
        cands.append(("last step of every size (equal data)", "final", _final_records(recs, data.plan)))
    for label, key, g in cands:
        g = sorted(g, key=lambda r: r["params"])
        if len(g) < 3:
            continue
        x = np.array([r["params"] for r in g], np.float64)
        y = np.array([r[metric] for r in g], np.float64)
        se = np.array([r.get(f"{metric}_se", np.nan) for r in g]) / y
        try:
            f = _fit(x, y, _bootstrap_metric(data, g, metric, n_boot))
        except ValueError as e:
            log.warning("fit of %s failed: %s", label, e)
            continue
        fits["loss_vs_params"].append({"label": label, "point": key, "sizes": [r["size"] for r in g],
                                       "compute": [r["compute"] for r in g], "fit": f, "x": x, "y": y,
                                       "rel_se": se})
    headline = None
    if fits["loss_vs_params"]:
        full = [e for e in fits["loss_vs_params"] if len(e["sizes"]) == len(sizes_order)]
        headline = (full or fits["loss_vs_params"])[-1]
        if any(e["point"] == "final" for e in fits["loss_vs_params"]):
            headline = [e for e in fits["loss_vs_params"] if e["point"] == "final"][0]
    fits["headline_params"] = headline

    # loss vs compute: the frontier over the compute points
    grid = [r for r in recs if r.get("nominal_compute") is not None]
    fr = frontier(grid, loss_key=metric) if grid else None
    if fr is not None and len(fr.compute) >= 3:
        win = []
        for c, s in zip(fr.compute, fr.size):
            win.append(next(r for r in grid if r["size"] == s and abs(r["compute"] - c) <= 1e-9 * c))
        reps = _bootstrap_metric(data, win, metric, n_boot)
        try:
            fits["loss_vs_compute"] = {"fit": _fit(fr.compute, fr.loss, reps), "frontier": fr}
        except ValueError as e:
            log.warning("compute fit failed: %s", e)
    if fr is not None and len(set(fr.size)) >= 2 and len(fr.compute) >= 2:
        try:
            fits["compute_optimal"] = fit_simple_power_law(fr.compute, fr.params)
        except ValueError:
            pass
        fits["compute_optimal_table"] = list(zip(fr.compute.tolist(), fr.size, fr.params.tolist(), fr.loss.tolist()))

    # bit error (1 - bit accuracy) vs parameters at the headline point
    if headline is not None:
        g = sorted(records_of(recs, headline), key=lambda r: r["params"])
        err = np.array([1 - r["bit_accuracy"] for r in g])
        try:
            reps = _bootstrap_metric(data, g, "bit_accuracy", n_boot)
            fits["bit_error_vs_params"] = {"fit": _fit(np.array([r["params"] for r in g]), err,
                                                       None if reps is None else 1 - reps),
                                           "sizes": [r["size"] for r in g]}
        except ValueError as e:
            log.warning("bit-error fit failed: %s", e)

    write_tables(out, data, fits, metric, sizes_order)
    plots(out, data, fits, metric, sizes_order)
    train_curves(workdir, out, data, sizes_order)
    return fits

