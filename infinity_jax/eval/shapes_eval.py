"""GenEval-like evaluator for images of the synthetic ``shapes`` dataset (:mod:`infinity_jax.data.shapes`).

Pipeline, per image ``(H, W, 3)`` uint8:

1. background = per-channel median of a 2-pixel border ring;
2. each pixel takes the nearest of {palette colours, background} (RGB distance); it counts as
   palette colour ``k`` when that distance is <= ``tol`` (default 100) and <= ``ratio`` (0.6) times
   the distance to the runner-up (anti-aliased edge blends sit between two colours and drop out);
3. per colour, 8-connected components (``scipy.ndimage.label``); drop blobs smaller than
   ``min_area`` (default ``max(12, 0.002 H W)`` pixels) or thinner than 2 pixels (no interior pixel
   at distance >= 2 from the outside: removes blend rims), then fill holes;
4. shape = the template (:func:`infinity_jax.data.shapes.shape_mask`, stretched to the blob's
   bounding box) with the highest IoU, if that IoU >= ``iou_min`` (0.72) and the box aspect ratio is
   within 1.4x of the shape's own, else ``"unknown"``. Features (bbox fill ratio, convex-hull
   solidity, circularity) are reported per object for inspection;
5. GenEval rules on the spec: every object group present (>= count; exactly count for
   ``counting``) with the right shape and, when given, colour; for ``position`` some subject
   instance stands in the relation to some object instance: the displacement of their bounding-box
   centres (as GenEval) along the named axis is >= 0.1 (image units) and at least the orthogonal one.

``evaluate`` returns per-image pass/fail, per-category accuracy and the overall score (the mean over
the categories present, as GenEval). ``write_report`` writes ``NAME.json`` and ``NAME.md``.

Demo (renders the held-out prompts' true renders, scores them, writes a PNG grid and reports)::

    python -m infinity_jax.eval.shapes_eval --demo OUT_DIR [--size 64] [--seeds 2]
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pathlib
from typing import Sequence

import numpy as np
from scipy import ndimage

from infinity_jax.data import shapes as S
from infinity_jax.data.shapes import render_heldout

_PALETTE = np.array([S.COLORS[c] for c in S.COLORS], np.float32)          # (K, 3)
_COLOR_NAMES = tuple(S.COLORS)
#: width / height of each shape's box (templates are stretched to the detected box).
_NATURAL_ASPECT = {s: a[0] / a[1] for s, a in S._ASPECT.items()}


# ------------------------------------------------------------------------------- segmentation --

def _background(img: np.ndarray) -> np.ndarray:
    """Median colour ``(3,)`` of the 2-pixel border ring of ``img (H, W, 3)``."""
    ring = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                           img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])
    return np.median(ring.astype(np.float32), axis=0)


def color_labels(img: np.ndarray, tol: float = 100.0, ratio: float = 0.6) -> np.ndarray:
    """Per-pixel palette index ``(H, W)`` int (order of ``shapes.COLORS``), -1 for background/unsure."""
    x = np.asarray(img, np.float32)[..., :3]
    cands = np.concatenate([_PALETTE, _background(x)[None]], 0)              # (K+1, 3)
    d = np.sqrt(((x[:, :, None, :] - cands[None, None]) ** 2).sum(-1))       # (H, W, K+1)
    order = np.argsort(d, axis=-1)
    best, second = order[..., 0], order[..., 1]
    db = np.take_along_axis(d, best[..., None], -1)[..., 0]
    ds = np.take_along_axis(d, second[..., None], -1)[..., 0]
    ok = (best < len(_PALETTE)) & (db <= tol) & (db <= ratio * ds)
    return np.where(ok, best, -1)


@functools.lru_cache(maxsize=4096)
def _template(shape: str, h: int, w: int) -> np.ndarray:
    return S.shape_mask(shape, h, w) >= 0.5


def _solidity(mask: np.ndarray) -> float:
    """Area / convex-hull area of a filled binary mask (pixel squares)."""
    from scipy.spatial import ConvexHull, QhullError  # noqa: PLC0415

    edge = mask & ~ndimage.binary_erosion(mask)
    ys, xs = np.nonzero(edge)
    pts = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    try:
        return float(mask.sum() / ConvexHull(pts).volume)
    except (QhullError, ValueError):
        return 1.0


def classify(mask: np.ndarray, iou_min: float = 0.72, max_aspect: float = 1.4) -> tuple[str, float, dict]:
    """Shape of a blob cropped to its bounding box ``(h, w)`` bool: (shape or 'unknown', best IoU, features)."""
    h, w = mask.shape
    area = float(mask.sum())
    perim = float((mask & ~ndimage.binary_erosion(mask)).sum())
    feats = {"fill": area / (h * w), "solidity": _solidity(mask),
             "circularity": 4 * math.pi * area / max(perim, 1.0) ** 2, "aspect": w / h}
    if min(h, w) < 5:
        return "unknown", 0.0, feats
    ious = {}
    for s in S.SHAPES:
        t = _template(s, h, w)
        ious[s] = float((t & mask).sum() / max((t | mask).sum(), 1))
    best = max(ious, key=ious.get)
    feats["iou"] = {k: round(v, 3) for k, v in ious.items()}
    if ious[best] < iou_min or abs(math.log((w / h) / _NATURAL_ASPECT[best])) > math.log(max_aspect):
        return "unknown", ious[best], feats
    return best, ious[best], feats


def detect(img: np.ndarray, *, tol: float = 100.0, ratio: float = 0.6, min_area: int | None = None,
           iou_min: float = 0.72) -> list[dict]:
    """Objects in ``img (H, W, 3)`` uint8: dicts with shape, color, center [x, y] (of the bounding
    box, image units, x right, y down), centroid [x, y] (of the mask), bbox [x0, y0, x1, y1) in
    pixels, area (pixels), iou (best template IoU), features."""
    img = np.asarray(img)[..., :3]
    H, W = img.shape[:2]
    if min_area is None:
        min_area = max(12, int(0.002 * H * W))
    labels = color_labels(img, tol, ratio)
    out = []
    for k, name in enumerate(_COLOR_NAMES):
        comp, n = ndimage.label(labels == k, structure=np.ones((3, 3), bool))
        if n == 0:
            continue
        for i, sl in enumerate(ndimage.find_objects(comp), start=1):
            m = comp[sl] == i
            if m.sum() < min_area:
                continue
            if ndimage.distance_transform_cdt(np.pad(m, 1), metric="chessboard").max() < 2:
                continue  # a 1-pixel-thin line or rim
            m = ndimage.binary_fill_holes(m)
            shape, iou, feats = classify(m, iou_min)
            ys, xs = np.nonzero(m)
            (y0, y1), (x0, x1) = (sl[0].start, sl[0].stop), (sl[1].start, sl[1].stop)
            out.append({"shape": shape, "color": name,
                        "center": [(x0 + x1) / (2 * W), (y0 + y1) / (2 * H)],
                        "centroid": [float((xs.mean() + x0 + 0.5) / W), float((ys.mean() + y0 + 0.5) / H)],
                        "bbox": [x0, y0, x1, y1], "area": int(m.sum()),
                        "iou": round(iou, 3), "features": {k2: (round(v, 3) if isinstance(v, float) else v)
                                                           for k2, v in feats.items()}})
    return out


# ---------------------------------------------------------------------------------- the rules --

def relation_holds(rel: str, a: Sequence[float], b: Sequence[float], min_d: float = 0.1) -> bool:
    """Box centre ``a`` is ``rel`` (left_of/right_of/above/below) of box centre ``b`` (image units)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    d, o = {"left_of": (dx, dy), "right_of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[rel]
    return d >= min_d and abs(o) <= d


def _matches(obj: dict, dets: list[dict]) -> list[dict]:
    return [d for d in dets if d["shape"] == obj["shape"] and (obj.get("color") is None or d["color"] == obj["color"])]


def judge(spec: dict, dets: list[dict]) -> tuple[bool, str]:
    """GenEval-style pass/fail of detections against a spec: (passed, reason)."""
    cat = spec["category"]
    groups = [_matches(o, dets) for o in spec["objects"]]
    for o, g in zip(spec["objects"], groups, strict=True):
        want = o.get("count", 1)
        what = " ".join(x for x in (o.get("color"), o["shape"]) if x)
        if cat == "counting" and len(g) != want:
            return False, f"expected {want} {what}, found {len(g)}"
        if len(g) < want:
            return False, f"expected {want} {what}, found {len(g)}"
    rel = spec.get("relation")
    if rel is not None:
        sub, obj = groups[rel["subject"]], groups[rel["object"]]
        if not any(a is not b and relation_holds(rel["type"], a["center"], b["center"]) for a in sub for b in obj):
            return False, f"relation {rel['type']} does not hold"
    return True, "ok"


def evaluate(images, specs: Sequence[dict], **detect_kwargs) -> dict:
    """Score images against their specs.

    Args:
      images: ``(N, H, W, 3)`` uint8 array or a list of ``(H, W, 3)`` uint8 arrays (any sizes).
      specs: N specs (``spec["category"]``, ``["objects"]``, ``["relation"]``; layout fields ignored),
        e.g. the second element of :func:`infinity_jax.data.shapes.heldout_prompts` tuples.
      **detect_kwargs: passed to :func:`detect` (tol, ratio, min_area, iou_min).

    Returns:
      ``dict(overall=float, per_category={cat: float}, counts={cat: int}, per_image=[dict(caption,
      category, passed, reason, detections)])``; ``overall`` is the mean of the per-category accuracies.
    """
    if len(images) != len(specs):
        raise ValueError(f"{len(images)} images but {len(specs)} specs")
    per_image = []
    for img, spec in zip(images, specs, strict=True):
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[-1] < 3:
            raise ValueError(f"expected (H, W, 3) images, got {img.shape}")
        if img.dtype != np.uint8:
            raise ValueError(f"expected uint8 images, got {img.dtype}")
        dets = detect(img, **detect_kwargs)
        ok, reason = judge(spec, dets)
        per_image.append({"caption": S.caption_for(spec), "category": spec["category"], "passed": bool(ok),
                          "reason": reason, "detections": dets})
    cats = [c for c in S.CATEGORIES if any(p["category"] == c for p in per_image)]
    per_cat = {c: float(np.mean([p["passed"] for p in per_image if p["category"] == c])) for c in cats}
    counts = {c: sum(p["category"] == c for p in per_image) for c in cats}
    overall = float(np.mean(list(per_cat.values()))) if per_cat else 0.0
    return {"overall": overall, "per_category": per_cat, "counts": counts, "per_image": per_image}


def summary(result: dict) -> str:
    """One line: ``overall 0.991 | single_object 1.000 (n=8) | ...``."""
    parts = [f"overall {result['overall']:.3f}"]
    parts += [f"{c} {v:.3f} (n={result['counts'][c]})" for c, v in result["per_category"].items()]
    return " | ".join(parts)


def write_report(result: dict, out_dir: str | os.PathLike, name: str = "shapes_eval", *,
                 title: str = "shapes GenEval-like evaluation", extra: dict | None = None,
                 max_failures: int = 50) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``OUT_DIR/NAME.json`` (the whole result plus ``extra``) and ``OUT_DIR/NAME.md``
    (a per-category table and up to ``max_failures`` failed captions); returns both paths."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    jpath.write_text(json.dumps({**result, **({"extra": extra} if extra else {})}, indent=1))
    lines = [f"# {title}", "", "| category | accuracy | images |", "|---|---:|---:|"]
    lines += [f"| {c} | {v:.3f} | {result['counts'][c]} |" for c, v in result["per_category"].items()]
    lines += [f"| **overall** (mean over categories) | **{result['overall']:.3f}** | {len(result['per_image'])} |", ""]
    if extra:
        lines += ["```", json.dumps(extra, indent=1), "```", ""]
    fails = [p for p in result["per_image"] if not p["passed"]]
    if fails:
        lines += [f"## failures ({len(fails)})", ""]
        lines += [f"- `{p['caption']}` ({p['category']}): {p['reason']}" for p in fails[:max_failures]]
        lines.append("")
    mpath.write_text("\n".join(lines))
    return jpath, mpath


# --------------------------------------------------------------------------- reference images --

def noise_images(kind: str, n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """Baseline images ``(n, size, size, 3)`` uint8: ``"uniform"`` (i.i.d. random pixels) or
    ``"blobs"`` (a background colour with 1-6 irregular palette-coloured blobs: radial profiles
    with random low harmonics, radius 0.06-0.22 of the image)."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    if kind != "blobs":
        raise ValueError(f"unknown noise kind {kind!r}")
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    out = np.empty((n, size, size, 3), np.uint8)
    bgs, cols = list(S.BACKGROUNDS.values()), list(S.COLORS.values())
    for i in range(n):
        img = np.empty((size, size, 3), np.float32)
        img[:] = bgs[rng.integers(len(bgs))]
        for _ in range(rng.integers(1, 7)):
            cx, cy = rng.uniform(0.1, 0.9, 2)
            r0 = rng.uniform(0.06, 0.22)
            theta = np.arctan2(yy - cy, xx - cx)
            r = np.full_like(theta, r0)
            for k in range(1, 6):
                r += r0 * rng.uniform(0, 0.35) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
            sx, sy = rng.uniform(0.6, 1.6, 2)
            inside = np.hypot((xx - cx) * sx, (yy - cy) * sy) < r
            img[inside] = cols[rng.integers(len(cols))]
        out[i] = img.astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------- demo --

def _grid_png(images: np.ndarray, results: list[dict], path: pathlib.Path, header: list[str],
              cols: int = 8, cell: int = 160) -> None:
    from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415

    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # pragma: no cover - old Pillow
        font = ImageFont.load_default()
    text_h, pad = 30, 4
    rows = math.ceil(len(images) / cols)
    head_h = 16 * len(header) + 8
    W, H = cols * (cell + pad) + pad, head_h + rows * (cell + text_h + pad) + pad
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, line in enumerate(header):
        draw.text((pad, 4 + 16 * j), line, fill=(0, 0, 0), font=font)
    for i, (img, res) in enumerate(zip(images, results, strict=True)):
        r, c = divmod(i, cols)
        x, y = pad + c * (cell + pad), head_h + r * (cell + text_h + pad)
        color = (0, 160, 0) if res["passed"] else (220, 0, 0)
        draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], outline=color, width=2)
        canvas.paste(Image.fromarray(img).resize((cell, cell), Image.NEAREST), (x, y))
        words, lines, cur = res["caption"].split(), [], ""
        for wd in words:  # wrap to the cell width
            trial = (cur + " " + wd).strip()
            if draw.textlength(trial, font=font) > cell and cur:
                lines.append(cur)
                cur = wd
            else:
                cur = trial
        lines.append(cur)
        for j, line in enumerate(lines[:2]):
            draw.text((x, y + cell + 2 + 13 * j), line, fill=color, font=font)
    canvas.save(path)


def demo(out_dir: str | os.PathLike, size: int = 64, seeds: int = 2) -> dict:
    """Render and score the held-out prompts' true renders (``seeds`` each) and noise baselines;
    write ``heldout_grid.png`` (first seed of every prompt; green: pass, red: fail) and reports."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    imgs, specs = render_heldout(size, range(seeds))
    res = evaluate(imgs, specs)
    n_noise = len(specs)
    base = {k: evaluate(noise_images(k, n_noise, size, seed=1), specs)["overall"] for k in ("uniform", "blobs")}
    write_report(res, out, "heldout_true_renders", title=f"shapes evaluator on held-out true renders ({size}px, "
                 f"{seeds} seeds/prompt)", extra={"noise_overall": base})
    first = slice(0, None, seeds)
    header = [f"held-out prompts, true renders at {size}x{size} (seed 0 of {seeds} shown; green = pass)",
              summary(res), "noise baselines: " + ", ".join(f"{k} {v:.3f}" for k, v in base.items())]
    _grid_png(imgs[first], res["per_image"][first], out / "heldout_grid.png", header)
    print(summary(res))
    print("noise:", base)
    return {"true_renders": res, "noise": base}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", metavar="OUT_DIR", required=True, help="write heldout_grid.png and reports here")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=2, help="true renders per held-out prompt")
    args = ap.parse_args(argv)
    demo(args.demo, args.size, args.seeds)


if __name__ == "__main__":
    main()
