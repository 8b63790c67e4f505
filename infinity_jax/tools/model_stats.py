r"""Print the parameter count and analytic FLOPs of an Infinity model.

  python -m infinity_jax.tools.model_stats --config configs/infinity.py:size=2b
  python -m infinity_jax.tools.model_stats --size 8b --pn 1M --h_div_w 1.0
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from infinity_jax.schedules import PN_TO_NUM_SCALES, ScheduleError, get_schedule, nearest_template
from infinity_jax.transformer.config import OFFICIAL_PARAM_COUNTS, SIZE_NAMES, size_config
from infinity_jax.transformer.flops import forward_flops, param_count

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (file.py:args).", lock_config=False)
_SIZE = flags.DEFINE_string("size", None, f"Model size instead of a config: {', '.join(SIZE_NAMES)}.")
_PN = flags.DEFINE_string("pn", None, "Resolution (0.06M, 0.25M, 0.60M, 1M); default: every one.")
_HW = flags.DEFINE_float("h_div_w", 1.0, "Aspect ratio h/w (nearest template is used).")
_TEXT = flags.DEFINE_integer("text_len", 77, "Caption tokens for the FLOP count.")
_VERIFY = flags.DEFINE_bool("verify", False, "Also count parameters by building the model abstractly.")


def stats(size: str, pns, h_div_w: float, text_len: int, verify: bool = False) -> str:
    cfg = size_config(size)
    n = param_count(cfg)
    lines = [f"Infinity-{size}: depth {cfg.depth}, width {cfg.embed_dim}, heads {cfg.num_heads}, "
             f"d {cfg.codebook_dim}{' (x4 patchify)' if cfg.apply_spatial_patchify else ''}, text width {cfg.text_channels}",
             f"  parameters: {n:,} ({n / 1e9:.3f} B)"]
    if size in OFFICIAL_PARAM_COUNTS:
        ref = OFFICIAL_PARAM_COUNTS[size]
        lines.append(f"  official:   {ref:,.0f} ({ref / 1e9:.3f} B), difference {100 * (n - ref) / ref:+.3f} %")
    if verify:
        # deferred so that --help and flag errors need no jax (0.2 s instead of 7 s)
        import jax  # noqa: PLC0415
        from flax import nnx  # noqa: PLC0415

        from infinity_jax.transformer.model import Infinity  # noqa: PLC0415

        abstract = nnx.eval_shape(lambda: Infinity(cfg, rngs=nnx.Rngs(0)))
        counted = sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
        lines.append(f"  built model: {counted:,} parameters ({'matches' if counted == n else 'DIFFERS'})")
    template = nearest_template(h_div_w)
    lines.append(f"  forward GFLOPs per image (template h/w={template}, caption {text_len} tokens, no CFG):")
    for pn in pns:
        s = get_schedule(template, pn)
        f = forward_flops(cfg, s.scales, text_len)
        lines.append(f"    {pn:>5} {s.pixel[0]}x{s.pixel[1]} {s.num_scales:2d} scales {f['tokens']:6d} tokens: "
                     f"{f['total'] / 1e9:10.1f} (attention {100 * f['attention'] / f['total']:.1f} %), "
                     f"train step x3: {3 * f['total'] / 1e9:10.1f}")
    return "\n".join(lines)


def main(argv):
    del argv
    size = _SIZE.value or (_CONFIG.value.size if _CONFIG.value is not None else None)
    if size is None:
        sys.exit("give --size or --config")
    if size not in SIZE_NAMES:
        sys.exit(f"unknown size {size!r}; choose one of {', '.join(SIZE_NAMES)}")
    pn = _PN.value or (_CONFIG.value.get("pn") if _CONFIG.value is not None and _PN.value else None)
    pns = [pn] if pn else list(PN_TO_NUM_SCALES)
    try:
        print(stats(size, pns, _HW.value, _TEXT.value, _VERIFY.value))
    except ScheduleError as e:
        sys.exit(str(e))


def run() -> None:
    """The ``infinity-model-stats`` console script."""
    app.run(main)


if __name__ == "__main__":
    run()
