"""Scale schedules and aspect-ratio templates ("dynamic resolution").

Infinity generates an image over a *scale schedule*: a list of token grids ``(t, h, w)``
from ``(1, 1, 1)`` up to the final latent grid. For every aspect-ratio template (h/w) the
official model defines one 13-scale list; a resolution ("pn": ``0.06M``, ``0.25M``,
``0.60M``, ``1M``) is a prefix of that list. Images always use ``t = 1``.

This module is the one place in the package where those tables live.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

import numpy as np

#: Spatial stride of the tokenizer for the transformer's token grid.
VAE_STRIDE = 16

#: Tokenizer tokens per transformer token along each axis with spatial patchify (the official 8B).
PATCHIFY_FACTOR = 2

# Base table: h/w ratio >= 1 -> 13 (h, w) latent grids.
_BASE_RATIO_TO_HWS: dict[float, list[tuple[int, int]]] = {
    1.000: [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40), (48, 48), (64, 64)],
    1.250: [(1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36), (55, 44), (70, 56)],
    1.333: [(1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36), (60, 45), (72, 54)],
    1.500: [(1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32), (63, 42), (78, 52)],
    1.750: [(1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32), (70, 40), (84, 48)],
    2.000: [(1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30), (74, 37), (90, 45)],
    2.500: [(1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26), (80, 32), (100, 40)],
    3.000: [(1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24), (90, 30), (111, 37)],
}

#: Resolution name -> number of scales (a prefix of the 13-scale list).
PN_TO_NUM_SCALES: dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}

#: Nominal square side per resolution name.
PN_TO_SQUARE_SIDE: dict[str, int] = {"0.06M": 256, "0.25M": 512, "0.60M": 768, "1M": 1024}

#: Temporal sizes of the official (t, h, w) tables; images replace t by 1.
PREDEFINED_T = (1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15, 17, 21)


def _build_templates() -> dict[float, list[tuple[int, int]]]:
    full: dict[float, list[tuple[int, int]]] = {}
    for ratio, hws in _BASE_RATIO_TO_HWS.items():
        full[ratio] = list(hws)
        if ratio != 1.0:
            # The official key for the inverse ratio truncates to three decimals.
            full[int(1 / ratio * 1000) / 1000] = [(w, h) for h, w in hws]
    return full


_TEMPLATE_TO_HWS = _build_templates()

#: The 15 h/w templates, in the official order.
H_DIV_W_TEMPLATES: tuple[float, ...] = tuple(_TEMPLATE_TO_HWS)

Schedule = tuple[tuple[int, int, int], ...]


class ScheduleError(ValueError):
    """A requested aspect ratio or resolution that the official tables do not cover."""


@dataclasses.dataclass(frozen=True)
class ScaleSchedule:
    """A scale schedule for one template and resolution.

    Attributes:
      h_div_w: the template ratio (one of ``H_DIV_W_TEMPLATES``).
      pn: resolution name.
      scales: ``((1, h_0, w_0), ..., (1, h_{K-1}, w_{K-1}))``.
      pixel: ``(H, W)`` of the image in pixels (``16 * last grid``).
    """

    h_div_w: float
    pn: str
    scales: Schedule
    pixel: tuple[int, int]

    @property
    def num_scales(self) -> int:
        return len(self.scales)

    @property
    def seq_len(self) -> int:
        return sequence_length(self.scales)


def template_hws(h_div_w_template: float) -> list[tuple[int, int]]:
    """The 13 (h, w) grids of a template."""
    if h_div_w_template not in _TEMPLATE_TO_HWS:
        raise ScheduleError(
            f"{h_div_w_template!r} is not an aspect-ratio template; templates are "
            f"{', '.join(map(str, H_DIV_W_TEMPLATES))}")
    return list(_TEMPLATE_TO_HWS[h_div_w_template])


def get_schedule(h_div_w_template: float, pn: str) -> ScaleSchedule:
    """The official schedule for a template and a resolution name (t set to 1)."""
    if pn not in PN_TO_NUM_SCALES:
        raise ScheduleError(f"unknown resolution {pn!r}; choose one of {', '.join(PN_TO_NUM_SCALES)}")
    hws = template_hws(h_div_w_template)[: PN_TO_NUM_SCALES[pn]]
    h, w = hws[-1]
    return ScaleSchedule(h_div_w_template, pn, tuple((1, a, b) for a, b in hws), (h * VAE_STRIDE, w * VAE_STRIDE))


def get_schedule_with_t(h_div_w_template: float, pn: str) -> Schedule:
    """The schedule as the official table stores it, with the predefined t sizes."""
    hws = template_hws(h_div_w_template)[: PN_TO_NUM_SCALES[pn]]
    return tuple((t, h, w) for t, (h, w) in zip(PREDEFINED_T, hws))


def nearest_template(h_div_w: float) -> float:
    """The template closest (absolute difference) to a height/width ratio."""
    if not (h_div_w > 0 and math.isfinite(h_div_w)):
        raise ScheduleError(f"aspect ratio must be a positive number, got {h_div_w!r}")
    arr = np.asarray(H_DIV_W_TEMPLATES)
    return float(arr[np.argmin(np.abs(h_div_w - arr))])


def parse_aspect_ratio(spec: str | float) -> float:
    """Parse ``'16:9'`` (width:height, as photographers write it), ``'h/w=0.5625'`` or a float h/w."""
    if isinstance(spec, (int, float)):
        return float(spec)
    s = str(spec).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)", s)
    if m:
        w, h = float(m.group(1)), float(m.group(2))
        if w <= 0 or h <= 0:
            raise ScheduleError(f"aspect ratio {spec!r} must have positive sides")
        return h / w
    m = re.fullmatch(r"(?:h/w\s*=?\s*)?(\d+(?:\.\d+)?)", s)
    if m:
        return float(m.group(1))
    raise ScheduleError(
        f"cannot read aspect ratio {spec!r}: write width:height such as '16:9', or h/w such as '0.5625'")


def select_schedule(aspect: str | float = 1.0, pn: str | int = "1M", max_rel_error: float = 0.1) -> ScaleSchedule:
    """Pick the template nearest to an aspect ratio and a resolution.

    Args:
      aspect: ``'16:9'`` (w:h), ``'0.5625'`` or a float h/w.
      pn: a resolution name (``'0.06M'``...``'1M'``) or a square side in pixels (256, 512, 768, 1024).
      max_rel_error: refuse a ratio whose nearest template is further than this (relative).
    """
    h_div_w = parse_aspect_ratio(aspect)
    if isinstance(pn, int) or (isinstance(pn, str) and pn.isdigit()):
        side = int(pn)
        names = {v: k for k, v in PN_TO_SQUARE_SIDE.items()}
        if side not in names:
            raise ScheduleError(
                f"resolution {side} is not supported; choose one of "
                f"{', '.join(f'{v} ({k})' for k, v in PN_TO_SQUARE_SIDE.items())}")
        pn = names[side]
    template = nearest_template(h_div_w)
    if abs(template - h_div_w) / h_div_w > max_rel_error:
        supported = ", ".join(f"{t:g}" for t in sorted(H_DIV_W_TEMPLATES))
        raise ScheduleError(
            f"aspect ratio h/w={h_div_w:.4g} is too far from every template ({supported})")
    return get_schedule(template, pn)


def sequence_length(scales: Sequence[Sequence[int]]) -> int:
    """Number of tokens over a schedule: sum of h*w (t is 1 for images)."""
    return int(sum(s[-2] * s[-1] for s in scales))


def normalize_schedule(scales: Sequence[Sequence[int]]) -> Schedule:
    """Accept (h, w) or (t, h, w) entries and return (1, h, w) tuples."""
    out = []
    for s in scales:
        s = tuple(int(v) for v in s)
        if len(s) == 2:
            s = (1,) + s
        if len(s) != 3 or min(s) < 1:
            raise ScheduleError(f"bad scale {s!r} in schedule")
        out.append((1, s[1], s[2]))
    return tuple(out)


def tokenizer_schedule(scales: Sequence[Sequence[int]], patchify: bool) -> Schedule:
    """The tokenizer's grids for a transformer schedule: ``(1, 2h, 2w)`` with spatial patchify, else ``(1, h, w)``.

    With spatial patchify (the official 8B) a transformer token packs a 2x2 block of tokenizer
    tokens, so the tokenizer grid is twice the transformer grid at every scale.
    """
    f = PATCHIFY_FACTOR if patchify else 1
    return tuple((1, f * h, f * w) for _, h, w in normalize_schedule(getattr(scales, "scales", scales)))


def transformer_schedule(scales: Sequence[Sequence[int]], patchify: bool) -> Schedule:
    """Inverse of :func:`tokenizer_schedule`: the transformer's grids for tokenizer grids."""
    scales = normalize_schedule(getattr(scales, "scales", scales))
    if not patchify:
        return scales
    f = PATCHIFY_FACTOR
    odd = [s[1:] for s in scales if s[1] % f or s[2] % f]
    if odd:
        raise ScheduleError(f"spatial patchify needs tokenizer grids divisible by {f}; got {odd}")
    return tuple((1, h // f, w // f) for _, h, w in scales)


def official_patchify(config: Mapping[str, Any]) -> bool:
    """``apply_spatial_patchify`` of an official configuration, wherever it states it.

    ``config`` is a fixture manifest, its ``config``, an official constructor-argument dict or one
    of its sections: the flag is read from the top level, the ``infinity`` (transformer) section or
    the ``vae`` section. Sections that state it must agree.
    """
    config = config.get("config", config) if isinstance(config.get("config"), Mapping) else config
    found = {}
    for where, section in (("top level", config), ("infinity", config.get("infinity")), ("vae", config.get("vae"))):
        if isinstance(section, Mapping) and section.get("apply_spatial_patchify") is not None:
            found[where] = bool(int(section["apply_spatial_patchify"]))
    if len(set(found.values())) > 1:
        raise ValueError(f"the configuration states apply_spatial_patchify differently: {found}")
    return next(iter(found.values()), False)


def scale_offsets(scales: Sequence[Sequence[int]]) -> list[int]:
    """Start index of each scale in the flattened multi-scale sequence (length K+1)."""
    offs = [0]
    for s in scales:
        offs.append(offs[-1] + s[-2] * s[-1])
    return offs


def rope_grid_for(scales: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The grid onto which RoPE positions are mapped (mode 2): the 1M last grid of the template.

    Looks the schedule up among the official templates (as a prefix); falls back to its own
    last grid when it is not an official schedule.
    """
    hws = [tuple(s[-2:]) for s in scales]
    for template, full in _TEMPLATE_TO_HWS.items():
        if full[: len(hws)] == hws:
            return full[-1]
    return hws[-1]
