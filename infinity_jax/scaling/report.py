"""Tables (CSV, Markdown, ``fits.json``), plots (PNG) and the printed summary of a sweep's analysis."""
from __future__ import annotations

import csv
import io

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import ScalarFormatter

from infinity_jax.scaling.files import as_path, read_jsonl, write_json
from infinity_jax.scaling.records import SweepData, records_of


def _fmt_fit(f) -> dict:
    d = f.to_dict()
    d["bootstrap"] = getattr(f, "boot_kind", "none")
    return d


def write_tables(out: str, data: SweepData, fits: dict, metric: str, sizes_order: list) -> None:
    recs = sorted(data.records, key=lambda r: (r["params"], r["step"]))
    K = max(len(r.get("per_scale_loss", [])) for r in recs)
    cols = ["size", "params", "step", "images_seen", "compute", "nominal_compute", "loss", "loss_se", "loss_uniform",
            "bit_accuracy", "bit_accuracy_se", "token_accuracy", "train_loss", "n_images"]
    cols += [f"loss_scale{k}" for k in range(K)] + [f"bit_acc_scale{k}" for k in range(K)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in recs:
        row = [r.get(c, "") for c in cols[:14]]
        row += list(r.get("per_scale_loss", [])) + [""] * (K - len(r.get("per_scale_loss", [])))
        row += list(r.get("per_scale_bit_accuracy", [])) + [""] * (K - len(r.get("per_scale_bit_accuracy", [])))
        w.writerow(row)
    as_path(f"{out}/scaling_points.csv").write_text(buf.getvalue())

    rows = []
    for e in fits["loss_vs_params"]:
        rows.append({"fit": f"{metric} vs params", "at": e["label"], **_fmt_fit(e["fit"])})
    if fits.get("loss_vs_compute"):
        rows.append({"fit": f"{metric} vs compute (frontier)", "at": "compute points",
                     **_fmt_fit(fits["loss_vs_compute"]["fit"])})
    if fits.get("bit_error_vs_params"):
        rows.append({"fit": "1 - bit accuracy vs params", "at": fits["headline_params"]["label"],
                     **_fmt_fit(fits["bit_error_vs_params"]["fit"])})
    if rows:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        as_path(f"{out}/scaling_fits.csv").write_text(buf.getvalue())
    write_json(f"{out}/fits.json", {"metric": metric, "fits": rows, "compute_optimal": fits.get("compute_optimal"),
                                    "compute_optimal_table": fits.get("compute_optimal_table")})

    md = [f"# Scaling sweep: validation {metric} (BSC strength {recs[0].get('strength', 0.2)}, "
          f"{recs[0].get('n_images', '?')} held-out images)", ""]
    md += ["## Sizes", "", "| size | params | FLOPs/step | steps (last) | compute (last) | val loss | bit acc |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for n in sizes_order:
        p = data.plan[n]
        last = max((r for r in recs if r["size"] == n), key=lambda r: r["step"], default=None)
        if last is None:
            md.append(f"| {n} | {p['params']:,} | {p['flops_per_step']:.3g} | - | - | - | - |")
            continue
        md.append(f"| {n} | {p['params']:,} | {p['flops_per_step']:.3g} | {last['step']} | {last['compute']:.3g} | "
                  f"{last[metric]:.4f} ± {last.get(metric + '_se', float('nan')):.4f} | {last['bit_accuracy']:.4f} |")
    md += ["", "## Validation loss at each compute point", ""]
    pts = sorted({(r["point"], r["nominal_compute"]) for r in recs if r.get("point") is not None})
    md.append("| compute | " + " | ".join(sizes_order) + " |")
    md.append("|---:|" + "---:|" * len(sizes_order))
    for k, c in pts:
        cells = []
        for n in sizes_order:
            r = next((r for r in recs if r["size"] == n and r.get("point") == k), None)
            cells.append(f"{r[metric]:.4f}" if r else "")
        md.append(f"| {c:.3g} | " + " | ".join(cells) + " |")
    md += ["", "## Power-law fits  L = E + A x^-alpha", "",
           "Standard errors from the fit's covariance (±); intervals: 95 % bootstrap "
           "(held-out images resampled, paired across sizes).", "",
           "| fit | at | alpha | E | A | n | R²(log) |", "|---|---|---|---|---|---:|---:|"]

    def cell(r, k):
        v, s, lo, hi = r[k], r[f"{k}_se"], r[f"{k}_ci_lo"], r[f"{k}_ci_hi"]
        txt = f"{v:.4g}"
        if np.isfinite(s):
            txt += f" ± {s:.2g}"
        if np.isfinite(lo):
            txt += f" [{lo:.3g}, {hi:.3g}]"
        return txt

    for r in rows:
        note = " (no decrease: loss does not fall with x here)" if "alpha=0" in r["at_bound"] else ""
        note += " (E at 0)" if "E=0" in r["at_bound"] else ""
        md.append(f"| {r['fit']} | {r['at']}{note} | {cell(r, 'alpha')} | {cell(r, 'E')} | {cell(r, 'A')} | {r['n']} | "
                  f"{r['r2_log']:.4f} |")
    h = fits.get("headline_params")
    if h is not None:
        g = sorted(records_of(data.records, h), key=lambda r: r["params"])
        pairs = []
        for a, b in zip(g, g[1:]):
            sa = data.samples.get((a["size"], int(a["step"])), {}).get(metric)
            sb = data.samples.get((b["size"], int(b["step"])), {}).get(metric)
            if sa is not None and sb is not None and len(sa) == len(sb) and len(sa) > 1:
                d = np.asarray(sb, np.float64) - np.asarray(sa, np.float64)
                pairs.append((a["size"], b["size"], float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))))
        if pairs:
            md += ["", f"## Does the loss fall with size? ({h['label']})", "",
                   "Paired differences over the same held-out images (next size minus this size):", "",
                   "| from | to | Δ loss | SE | Δ / SE |", "|---|---|---:|---:|---:|"]
            md += [f"| {a} | {b} | {m:+.5f} | {se:.5f} | {m / se:+.1f} |" for a, b, m, se in pairs]
    co = fits.get("compute_optimal_table")
    if co:
        md += ["", "## Compute-efficient frontier", "", "| compute | best size | params | loss |",
               "|---:|---|---:|---:|"]
        md += [f"| {c:.3g} | {s} | {p:,.0f} | {l_:.4f} |" for c, s, p, l_ in co]
        if fits.get("compute_optimal"):
            a = fits["compute_optimal"]
            md += ["", f"Compute-optimal size N_opt ∝ C^a: a = {a['a']:.3f}"
                   + (f" ± {a['a_se']:.2f}" if np.isfinite(a["a_se"]) else "") + f" ({a['n']} points; coarse: the "
                   "optimum can only be one of the sizes)."]
    as_path(f"{out}/scaling.md").write_text("\n".join(md) + "\n")


def _alpha_text(f) -> str:
    txt = f"α = {f.alpha:.3f}"
    if np.isfinite(f.se.get("alpha", float("nan"))):
        txt += f" ± {f.se['alpha']:.3f}"
    if "alpha" in f.ci:
        txt += f" [{f.ci['alpha'][0]:.2f}, {f.ci['alpha'][1]:.2f}]"
    return txt


def _plain_ticks(ax) -> None:
    for fmt in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        sf_ = ScalarFormatter()
        sf_.set_scientific(False)
        fmt(sf_)


def _savefig(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    as_path(path).write_bytes(buf.getvalue())


def plots(out: str, data: SweepData, fits: dict, metric: str, sizes_order: list) -> None:
    matplotlib.use("Agg")
    recs = data.records
    cmap = plt.get_cmap("viridis")
    colors = {n: cmap(i / max(len(sizes_order) - 1, 1)) for i, n in enumerate(sizes_order)}

    # 1. loss vs parameters (each compute point; headline fit)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    entries = fits["loss_vs_params"]
    pcm = plt.get_cmap("plasma")
    for i, e in enumerate(entries):
        c = pcm(0.15 + 0.7 * i / max(len(entries) - 1, 1))
        se = e["rel_se"] * e["y"]
        ax.errorbar(e["x"], e["y"], yerr=np.nan_to_num(se), fmt="o", color=c, ms=5, capsize=2,
                    label=e["label"].replace("compute point ", "pt "))
        if "alpha=0" in e["fit"].at_bound:  # loss does not fall with size at this compute: no curve
            ax.plot(e["x"], e["y"], ":", color=c, lw=0.8)
            continue
        xs = np.geomspace(e["x"].min() / 1.3, e["x"].max() * 1.3, 100)
        ax.plot(xs, e["fit"].predict(xs), "-", color=c, lw=1.2 if e is not fits["headline_params"] else 2.2,
                alpha=0.9)
    h = fits.get("headline_params")
    if h is not None:
        f = h["fit"]
        ax.axhline(f.E, color="gray", ls=":", lw=1)
        ax.set_title(f"val {metric} vs parameters ({h['label']})\n{_alpha_text(f)}, E = {f.E:.3f}", fontsize=9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax)
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"validation {metric} (BSC 0.2)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    # 2. loss vs compute: per-size curves and the frontier fit
    ax = axes[1]
    for n in sizes_order:
        rs = sorted((r for r in recs if r["size"] == n), key=lambda r: r["compute"])
        if rs:
            ax.plot([r["compute"] for r in rs], [r[metric] for r in rs], "o-", color=colors[n], ms=4,
                    label=f"{n} ({data.plan[n]['params'] / 1e6:.2g}M)")
    lc = fits.get("loss_vs_compute")
    if lc:
        f, fr = lc["fit"], lc["frontier"]
        xs = np.geomspace(fr.compute.min() / 1.3, fr.compute.max() * 1.3, 100)
        ax.plot(xs, f.predict(xs), "k--", lw=1.5, label=f"frontier fit: {_alpha_text(f)}")
        ax.axhline(f.E, color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax)
    ax.set_xlabel("training compute (FLOPs, analytic)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("val loss vs compute", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    _savefig(fig, f"{out}/loss_scaling.png")
    plt.close(fig)

    # 3. bit accuracy vs compute and params
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for n in sizes_order:
        rs = sorted((r for r in recs if r["size"] == n), key=lambda r: r["compute"])
        if rs:
            axes[0].plot([r["compute"] for r in rs], [r["bit_accuracy"] for r in rs], "o-", color=colors[n], ms=4,
                         label=n)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("training compute (FLOPs)")
    axes[0].set_ylabel("validation bit accuracy")
    axes[0].legend(fontsize=7)
    axes[0].grid(True, alpha=0.3)
    if h is not None:
        g = sorted(records_of(recs, h), key=lambda r: r["params"])
        axes[1].plot([r["params"] for r in g], [r["bit_accuracy"] for r in g], "o-", color="C3", label="all scales")
        K = len(g[0]["per_scale_bit_accuracy"])
        for k in range(K):
            axes[1].plot([r["params"] for r in g], [r["per_scale_bit_accuracy"][k] for r in g], ".--",
                         color=plt.get_cmap("cool")(k / max(K - 1, 1)), lw=0.8, label=f"scale {k}")
        axes[1].set_title(f"bit accuracy vs parameters ({h['label']})", fontsize=9)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("parameters")
    axes[1].legend(fontsize=7)
    axes[1].grid(True, alpha=0.3)
    fig.tight_layout()
    _savefig(fig, f"{out}/bit_accuracy.png")
    plt.close(fig)

    # 4. per-scale validation loss vs parameters at the headline point
    if h is not None:
        g = sorted(records_of(recs, h), key=lambda r: r["params"])
        K = len(g[0]["per_scale_loss"])
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for k in range(K):
            ax.plot([r["params"] for r in g], [r["per_scale_loss"][k] for r in g], "o-",
                    color=plt.get_cmap("cool")(k / max(K - 1, 1)),
                    label=f"scale {k} {tuple(data.plan[g[0]['size']]['scales'][k][1:])}")
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("validation loss of the scale")
        ax.set_title(f"per-scale validation loss ({h['label']})", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        _savefig(fig, f"{out}/per_scale_loss.png")
        plt.close(fig)


def train_curves(workdir: str, out: str, data: SweepData, sizes_order: list) -> bool:
    """Training loss (from the trainer's metrics.jsonl, smoothed) against compute, one line per size."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cmap = plt.get_cmap("viridis")
    drawn = False
    for i, n in enumerate(sizes_order):
        rows = read_jsonl(f"{workdir}/{n}/metrics.jsonl")
        pts = sorted({int(r["step"]): float(r["loss"]) for r in rows if "loss" in r and "step" in r}.items())
        if len(pts) < 2:
            continue
        steps = np.array([p[0] for p in pts], np.float64)
        loss = np.array([p[1] for p in pts])
        sm, acc = np.empty_like(loss), loss[0]
        for j, v in enumerate(loss):  # EMA with bias-free start
            acc = v if j == 0 else 0.95 * acc + 0.05 * v
            sm[j] = acc
        ax.plot(steps * data.plan[n]["flops_per_step"], sm, color=cmap(i / max(len(sizes_order) - 1, 1)), lw=1.2,
                label=n)
        drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute (FLOPs, analytic)")
        ax.set_ylabel("training loss (EMA 0.95; BSC 0.3, caption dropout)")
        _plain_ticks(ax)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        _savefig(fig, f"{out}/train_curves.png")
    plt.close(fig)
    return drawn


def print_summary(fits: dict, out: str) -> None:
    h = fits.get("headline_params")
    if h is not None:
        print(f"loss vs parameters ({h['label']}): {h['fit'].describe()}")
    lc = fits.get("loss_vs_compute")
    if lc:
        print(f"loss vs compute (frontier): {lc['fit'].describe()}")
    if fits.get("compute_optimal"):
        a = fits["compute_optimal"]
        print(f"compute-optimal size: N_opt ~ C^{a['a']:.3f}")
    print(f"wrote {out}/scaling.md, scaling_points.csv, scaling_fits.csv, fits.json, loss_scaling.png, "
          f"bit_accuracy.png, per_scale_loss.png, train_curves.png")

