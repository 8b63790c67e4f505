"""Which scales lose the prompt? Replay the first k scales of true images, sample the rest, score.

For each prompt spec the true render is tokenized; the sampler replays its bits for the first ``k``
scales and samples the remaining ones from the model (same text, guidance and seeds); the shapes
evaluator scores the decoded images. ``k = 0`` is plain generation and ``k = K`` is the tokenizer's
reconstruction, so the curve between them shows at which scales a generator falls short::

    python -m infinity_jax.eval.prefix_replay --bundle out/demo/bundle --size 32 --style canonical \\
        --backgrounds "light gray" --out out/demo/results/prefix_replay.json
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

import numpy as np

from infinity_jax.data import shapes as S
from infinity_jax.eval import shapes_eval as E


def prefix_replay_scores(pipe, prompts: Sequence[str], specs: Sequence[dict], images: np.ndarray, *,
                         cfg: float | None = None, tau: float | None = None, seed: int = 0,
                         batch: int = 96) -> list[dict]:
    """Evaluator results for ``k = 0 .. K`` replayed scales.

    Args:
      pipe: a :class:`infinity_jax.sampling.pipeline.Pipeline` with a text encoder and a tokenizer.
      prompts, specs: captions and their shapes specs (``shapes.heldout_prompts`` gives both).
      images: ``(N, H, W, 3)`` uint8 true renders of the specs at the tokenizer's image size.
      cfg, tau: sampling settings (default: the pipeline's); seed: the first image's seed.
    Returns:
      one dict per k: ``{"replayed_scales": k, "overall": float, "per_category": {...}}``.
    """
    # deferred so that --help and flag errors need no jax (0.2 s instead of 7 s)
    from infinity_jax.schedules import tokenizer_schedule  # noqa: PLC0415
    from infinity_jax.tokenizer.pixels import from_uint8, to_uint8  # noqa: PLC0415

    if not (len(prompts) == len(specs) == len(images)):
        raise ValueError(f"{len(prompts)} prompts, {len(specs)} specs and {len(images)} images: need one of each")
    sched = pipe.schedule_for(1.0)
    K = len(sched)
    settings = pipe.sampling_config(cfg=cfg, tau=tau)
    grids = tokenizer_schedule(sched, pipe.transformer.cfg.apply_spatial_patchify)
    gen = [[] for _ in range(K + 1)]
    for st in range(0, len(prompts), batch):
        sl = slice(st, st + batch)
        x = from_uint8(images[sl])
        _, bits = pipe.tokenizer.encode(x, schedule=grids)
        feats, mask = pipe.encode_prompts(list(prompts[sl]))
        seeds = np.arange(seed + st, seed + st + len(x))
        for k in range(K + 1):
            out = pipe.sampler.generate(feats, mask, sched, settings=settings, seeds=seeds, replay_bits=bits,
                                        replay_scales=k)
            gen[k].append(to_uint8(out.images))
    rows = []
    for k in range(K + 1):
        res = E.evaluate(np.concatenate(gen[k]), list(specs))
        rows.append({"replayed_scales": k, "overall": res["overall"], "per_category": res["per_category"]})
    return rows


def markdown(rows: Sequence[dict], schedule) -> str:
    """A table: replayed scales (up to which grid) vs the evaluator's scores."""
    cats = [c for c in S.CATEGORIES if c in rows[0]["per_category"]]
    head = "| replayed from the true image | overall | " + " | ".join(cats) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(cats)]
    for r in rows:
        k = r["replayed_scales"]
        if k == 0:
            what = "none (generation)"
        else:
            what = (("scale 1" if k == 1 else f"scales 1-{k}") + f" (to {schedule[k - 1][-2]}x{schedule[k - 1][-1]})"
                    + (" = reconstruction" if k == len(schedule) else ""))
        scores = " | ".join(f"{r['per_category'][c]:.2f}" for c in cats)
        lines.append(f"| {what} | {r['overall']:.3f} | {scores} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True, help="an inference bundle (e.g. a demo's WORKDIR/bundle)")
    ap.add_argument("--size", type=int, default=32, help="image side the bundle generates")
    ap.add_argument("--style", default="free", choices=S.LAYOUTS, help="layout of the true renders")
    ap.add_argument("--backgrounds", nargs="*", default=None, help="background names of the true renders")
    ap.add_argument("--seeds", type=int, default=1, help="true renders (and samples) per held-out prompt")
    ap.add_argument("--cfg", type=float, default=None)
    ap.add_argument("--tau", type=float, default=None)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if not pathlib.Path(args.bundle).is_dir():
        print(f"error: no bundle folder {args.bundle}", file=sys.stderr)
        return 2
    # deferred so that --help and flag errors need no jax (0.2 s instead of 7 s)
    from infinity_jax.sampling.pipeline import Pipeline  # noqa: PLC0415

    pipe = Pipeline.from_checkpoint(args.bundle)
    try:
        images, specs = E.render_heldout(args.size, range(args.seeds), args.style, args.backgrounds)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    prompts = [S.caption_for(s) for s in specs]
    rows = prefix_replay_scores(pipe, prompts, specs, images, cfg=args.cfg, tau=args.tau)
    print(markdown(rows, pipe.schedule_for(1.0)))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
