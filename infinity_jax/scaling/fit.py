"""Power-law fits with an irreducible term, their uncertainty, and the compute-optimal frontier.

The model is ``L(x) = E + A * x**(-alpha)`` (x: parameters or training FLOPs), fitted by least
squares on log residuals ``log L_i - log L(x_i)`` (relative errors weigh small and large losses
alike, as in Chinchilla's approach 3) with ``scipy.optimize.least_squares``:

* parameters ``(E, log A', alpha)`` with ``x`` scaled by its geometric mean (``A = A' * x_ref**alpha``),
  which keeps the problem well conditioned whatever the units of x;
* bounds ``0 <= E < min(L)`` and ``0 < alpha <= 10``; several starts over a grid of (E, alpha), the
  best kept (the loss surface has flat valleys along E ~ A);
* ``loss="huber"`` for a robust fit (``f_scale`` in log units), or per-point ``sigma`` (relative
  standard errors of the losses) as weights.

Uncertainty, two ways:

* asymptotic: ``cov = s^2 (J^T J)^-1`` at the optimum (``s^2 = RSS / (n - 3)``, or 1 with
  ``absolute_sigma=True`` and known sigma); standard errors of E, A, alpha by the delta method.
  With n = 3 points the fit interpolates and the standard errors are NaN;
* bootstrap: :func:`bootstrap_power_law` refits replicate loss vectors, e.g. from resampling the
  held-out images (paired over sizes, see ``infinity_jax.scaling``) or the residuals
  (:func:`residual_bootstrap`); percentile intervals of every parameter.

:func:`frontier` gives the compute-efficient frontier (the lowest loss reached at each compute
value and the size that reached it) and :func:`fit_simple_power_law` the compute-optimal size
exponent ``N_opt ~ C^a``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
from scipy import optimize

PARAM_NAMES = ("E", "A", "alpha")


@dataclasses.dataclass
class PowerLawFit:
    """``L(x) = E + A * x**-alpha``; ``se`` standard errors, ``ci`` bootstrap intervals."""

    E: float
    A: float
    alpha: float
    x_ref: float
    n: int
    dof: int
    rss: float
    r2_log: float
    cov: np.ndarray  # covariance of (E, log A', alpha) in the scaled problem
    irreducible: bool = True
    at_bound: tuple[str, ...] = ()
    se: dict = dataclasses.field(default_factory=dict)
    ci: dict = dataclasses.field(default_factory=dict)
    ci_level: float = 0.95
    bootstrap: np.ndarray | None = None  # (n_boot, 3) replicate (E, A, alpha)
    x: np.ndarray | None = None
    y: np.ndarray | None = None

    def predict(self, x) -> np.ndarray:
        return self.E + self.A * np.asarray(x, np.float64) ** (-self.alpha)

    def residuals(self) -> np.ndarray:
        """Log residuals log(y) - log(fit) at the fitted points."""
        return np.log(self.y) - np.log(self.predict(self.x))

    def describe(self, digits: int = 3) -> str:
        def pm(name):
            v = getattr(self, name)
            s = self.se.get(name, float("nan"))
            txt = f"{v:.{digits}g}" + (f" ± {s:.2g}" if np.isfinite(s) else "")
            if name in self.ci:
                lo, hi = self.ci[name]
                txt += f" [{lo:.{digits}g}, {hi:.{digits}g}]"
            return f"{name} = {txt}"

        names = PARAM_NAMES if self.irreducible else ("A", "alpha")
        return ", ".join(pm(n) for n in names) + f" (n={self.n}, R²(log)={self.r2_log:.4f})"

    def to_dict(self) -> dict[str, Any]:
        d = {"E": self.E, "A": self.A, "alpha": self.alpha, "x_ref": self.x_ref, "n": self.n, "dof": self.dof,
             "rss": self.rss, "r2_log": self.r2_log, "irreducible": self.irreducible,
             "at_bound": list(self.at_bound), "ci_level": self.ci_level}
        for k in PARAM_NAMES:
            d[f"{k}_se"] = self.se.get(k, float("nan"))
            lo, hi = self.ci.get(k, (float("nan"), float("nan")))
            d[f"{k}_ci_lo"], d[f"{k}_ci_hi"] = lo, hi
        d["n_boot"] = 0 if self.bootstrap is None else int(len(self.bootstrap))
        return d


def _as_arrays(x, y, sigma=None):
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y have different lengths ({x.size} and {y.size})")
    ok = np.isfinite(x) & np.isfinite(y)
    if np.any(x[ok] <= 0) or np.any(y[ok] <= 0):
        raise ValueError("x and y must be positive for a power law")
    s = None
    if sigma is not None:
        s = np.broadcast_to(np.asarray(sigma, np.float64), x.shape).astype(np.float64)
        ok &= np.isfinite(s) & (s > 0)
        s = s[ok]
    return x[ok], y[ok], s


def fit_power_law(x: Sequence[float], y: Sequence[float], *, irreducible: bool = True,
                  sigma: Sequence[float] | float | None = None, absolute_sigma: bool = False,
                  loss: str = "linear", f_scale: float = 0.05, alpha_max: float = 10.0,
                  x_ref: float | None = None, start: tuple[float, float, float] | None = None) -> PowerLawFit:
    """Fit ``y = E + A x^-alpha`` (``E = 0`` without ``irreducible``) on log residuals.

    Args:
      x, y: positive values (NaNs are dropped). At least 3 points with ``irreducible`` (2 without).
      sigma: relative standard errors of y (e.g. SE of the validation loss / loss): weights 1/sigma.
      absolute_sigma: use sigma as the absolute noise level (no rescaling by the residual variance).
      loss: ``"linear"`` (least squares) or a robust loss of ``scipy.optimize.least_squares``
        (``"huber"``, ``"soft_l1"``) with scale ``f_scale`` in log units.
      x_ref: the scale of x (default: the geometric mean of x).
      start: ``(E, A, alpha)`` to start from (bootstrap refits start at the fit) before the grid of starts,
        which is only searched when that start does not converge.
    """
    x, y, s = _as_arrays(x, y, sigma)
    p = 3 if irreducible else 2
    if x.size < p:
        what = " with an irreducible term" if irreducible else ""
        raise ValueError(f"need at least {p} points to fit a power law{what}, got {x.size}")
    x_ref = float(np.exp(np.mean(np.log(x)))) if x_ref is None else float(x_ref)
    u = np.log(x / x_ref)
    ly = np.log(y)
    w = 1.0 / s if s is not None else np.ones_like(y)
    ymin = float(np.min(y))
    e_hi = ymin * (1 - 1e-9)

    def model_log(theta):
        E, la, al = theta
        return np.log(E + np.exp(la - al * u))

    def resid(theta):
        return (ly - model_log(theta)) * w

    def jac(theta):
        E, la, al = theta
        t = np.exp(la - al * u)
        m = E + t
        # d/dtheta of -log(m) (residual = ly - log m), times w
        dE = -1.0 / m
        dla = -t / m
        dal = t * u / m
        return np.stack([dE, dla, dal], axis=1) * w[:, None]

    best = None
    if irreducible:
        starts = []
        if start is not None:
            E0, A0, a0 = (float(v) for v in start)
            E0 = min(max(E0, 0.0), 0.999 * ymin)
            starts.append([E0, math.log(max(A0, 1e-300)) - a0 * math.log(x_ref), min(max(a0, 1e-3), alpha_max)])
        grid = []
        for ef in (0.0, 0.5, 0.9, 0.99):
            for a0 in (0.05, 0.15, 0.5, 1.5):
                E0 = ef * ymin
                grid.append([E0, float(np.mean(np.log(np.maximum(y - E0, 1e-12 * ymin)) + a0 * u)), a0])
        for i, x0 in enumerate(starts + grid):
            if i == len(starts) and best is not None and best.success:
                break  # the given start converged: no grid search
            try:
                r = optimize.least_squares(resid, x0=x0, jac=jac, loss=loss, f_scale=f_scale,
                                           bounds=([0.0, -np.inf, 1e-6], [e_hi, np.inf, alpha_max]),
                                           x_scale="jac", max_nfev=500, xtol=1e-13, ftol=1e-13, gtol=1e-13)
            except ValueError:
                continue
            if best is None or r.cost < best.cost - 1e-15:
                best = r
        theta = best.x
        J = jac(theta)
    else:
        def resid2(th):
            return resid([0.0, th[0], th[1]])

        def jac2(th):
            return jac([0.0, th[0], th[1]])[:, 1:]

        # the log-log line is the exact least-squares start
        A_ = np.vstack([np.ones_like(u), -u]).T * w[:, None]
        la0, a0 = np.linalg.lstsq(A_, ly * w, rcond=None)[0]
        best = optimize.least_squares(resid2, x0=[la0, a0], jac=jac2, loss=loss, f_scale=f_scale,
                                      bounds=([-np.inf, -alpha_max], [np.inf, alpha_max]), x_scale="jac",
                                      xtol=1e-14, ftol=1e-14, gtol=1e-14)
        theta = np.array([0.0, best.x[0], best.x[1]])
        J = jac(theta)[:, 1:]
    r = resid(theta)
    rss = float(np.sum(r ** 2))
    n = int(x.size)
    dof = n - p
    # covariance in the free parameters
    JTJ = J.T @ J
    try:
        inv = np.linalg.pinv(JTJ)
    except np.linalg.LinAlgError:
        inv = np.full_like(JTJ, np.nan)
    if s is not None and absolute_sigma:
        scale = 1.0
    else:
        scale = rss / dof if dof > 0 else float("nan")
    cov_free = inv * scale
    cov = np.full((3, 3), np.nan)
    if irreducible:
        cov[:, :] = cov_free
    else:
        cov[1:, 1:] = cov_free
        cov[0, :] = cov[:, 0] = 0.0
    E, la, al = (float(v) for v in theta)
    A = float(math.exp(la) * x_ref ** al)
    # delta method: log A = la + al * log x_ref
    g = np.array([0.0, 1.0, math.log(x_ref)])
    var_logA = float(g @ cov @ g)
    se = {"E": float(math.sqrt(cov[0, 0])) if cov[0, 0] >= 0 else float("nan"),
          "alpha": float(math.sqrt(cov[2, 2])) if cov[2, 2] >= 0 else float("nan"),
          "A": float(A * math.sqrt(var_logA)) if var_logA >= 0 else float("nan")}
    at_bound = []
    if irreducible and E <= 1e-12 * ymin:
        at_bound.append("E=0")
    if irreducible and E >= ymin * (1 - 1e-6):
        at_bound.append("E=min(L)")
    if al >= alpha_max * (1 - 1e-6):
        at_bound.append("alpha=max")
    if irreducible and al <= 1e-5:
        at_bound.append("alpha=0")
    ss_tot = float(np.sum(((ly - np.average(ly, weights=w ** 2)) * w) ** 2))
    r2 = 1.0 - rss / ss_tot if ss_tot > 0 else float("nan")
    return PowerLawFit(E=E, A=A, alpha=al, x_ref=x_ref, n=n, dof=dof, rss=rss, r2_log=r2, cov=cov,
                       irreducible=irreducible, at_bound=tuple(at_bound), se=se, x=x, y=y)


def bootstrap_power_law(fit: PowerLawFit, x, y_replicates, *, level: float = 0.95, **fit_kwargs) -> PowerLawFit:
    """Refit every replicate ``y_replicates (n_boot, n)`` at the same ``x``; adds percentile intervals.

    Replicates come from resampling the data the losses were averaged from (held-out images),
    from :func:`residual_bootstrap`, or anything else; failed refits are dropped.
    """
    reps = []
    for yb in np.asarray(y_replicates, np.float64):
        try:
            f = fit_power_law(x, yb, irreducible=fit.irreducible, x_ref=fit.x_ref, start=(fit.E, fit.A, fit.alpha),
                              **fit_kwargs)
        except (ValueError, np.linalg.LinAlgError):
            continue
        reps.append((f.E, f.A, f.alpha))
    out = dataclasses.replace(fit)
    if not reps:
        return out
    b = np.asarray(reps)
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out.bootstrap = b
    out.ci_level = level
    out.ci = {k: (float(np.percentile(b[:, i], lo_q)), float(np.percentile(b[:, i], hi_q)))
              for i, k in enumerate(PARAM_NAMES)}
    out.se = dict(fit.se)
    out.se.update({f"{k}_boot": float(np.std(b[:, i], ddof=1)) if len(b) > 1 else float("nan")
                   for i, k in enumerate(PARAM_NAMES)})
    return out


def residual_bootstrap(fit: PowerLawFit, n_boot: int = 500, seed: int = 0) -> np.ndarray:
    """Replicate y vectors: the fitted curve times resampled multiplicative (log) residuals."""
    rng = np.random.default_rng(seed)
    res = fit.residuals()
    if fit.dof > 0:
        res = res * math.sqrt(fit.n / fit.dof)  # leverage-free inflation of the residual spread
    base = np.log(fit.predict(fit.x))
    idx = rng.integers(0, len(res), size=(n_boot, len(res)))
    return np.exp(base[None, :] + res[idx])


def fit_simple_power_law(x, y) -> dict:
    """Ordinary least squares of ``log y = log k + a log x``: {a, a_se, k, n}."""
    x = np.log(np.asarray(x, np.float64))
    y = np.log(np.asarray(y, np.float64))
    n = x.size
    if n < 2:
        raise ValueError("need at least 2 points")
    A = np.vstack([np.ones_like(x), x]).T
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    res = y - A @ coef
    dof = n - 2
    se = float("nan")
    if dof > 0:
        cov = np.linalg.pinv(A.T @ A) * float(res @ res) / dof
        se = float(math.sqrt(cov[1, 1]))
    return {"a": float(coef[1]), "a_se": se, "k": float(math.exp(coef[0])), "n": int(n)}


@dataclasses.dataclass
class Frontier:
    """Lowest loss per compute value: ``compute``, ``loss``, ``size`` (name) and ``params`` of the winner."""

    compute: np.ndarray
    loss: np.ndarray
    size: list
    params: np.ndarray


def frontier(records: Sequence[dict], *, key: str = "nominal_compute", loss_key: str = "loss",
             rel_tol: float = 0.05) -> Frontier:
    """The compute-efficient frontier of ``records`` (dicts with ``key``, ``loss_key``, ``size``, ``params``,
    ``compute``).

    Records are grouped by ``key`` (the nominal compute point, so a few steps of rounding do not split
    a group; records within ``rel_tol`` of each other are merged when ``key`` is missing); in each group the
    lowest loss wins and its *actual* ``compute`` is reported.
    """
    groups: list[list[dict]] = []
    anchors: list[float] = []
    for r in sorted(records, key=lambda r: float(r.get(key) or r["compute"])):
        c = float(r.get(key) or r["compute"])
        if anchors and abs(c - anchors[-1]) <= rel_tol * anchors[-1]:
            groups[-1].append(r)
        else:
            groups.append([r])
            anchors.append(c)
    comp, loss, size, params = [], [], [], []
    for g in groups:
        best = min(g, key=lambda r: float(r[loss_key]))
        comp.append(float(best["compute"]))
        loss.append(float(best[loss_key]))
        size.append(best["size"])
        params.append(float(best["params"]))
    return Frontier(np.asarray(comp), np.asarray(loss), size, np.asarray(params))


def lower_envelope(compute: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of a (compute, loss) cloud that no cheaper point beats (running minimum over compute)."""
    order = np.argsort(compute)
    c, l_ = np.asarray(compute)[order], np.asarray(loss)[order]
    keep = l_ <= np.minimum.accumulate(l_)
    return c[keep], l_[keep]
