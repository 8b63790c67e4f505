"""``shapes``: an endless, captioned, synthetic text-to-image dataset of coloured geometric objects.

Made for the embedded default (a laptop-CPU text-to-image run with no downloaded weights or
data): every sample is a plain solid background with 1-4 flat coloured objects and a caption in
the spirit of GenEval's six categories. :mod:`infinity_jax.eval.shapes_eval` scores generated
images against the same structured specs.

Vocabulary
  shapes  circle, square, triangle (pointing up), star (5 points, pointing up), cross (a plus);
          never rotated, so they stay separable at 64x64.
  colours red, yellow, green, cyan, blue, purple (see :data:`COLORS`).
  backgrounds white, light gray, dark gray, black (never named in captions).
  layout  ``"free"`` (default): sizes and centres drawn from continuous ranges; ``"lattice"``:
          centres on a lattice of 1/8 image units and one or two sizes per object count
          (:data:`_LATTICE_SIZES`), so the same object always renders the same pixels up to a
          whole-step shift and a tiny generator learns crisp shapes instead of averaging over
          sub-pixel placements (the embedded demo's tokenizer; at 32x32 a step is one 4x4-pixel token).
          ``"canonical"``: nothing the caption leaves open is drawn at random but the background:
          objects sit in fixed slots by their number (two in reading order, side by side, unless a
          relation puts the subject on its side; three as a triangle; four as a 2x2 grid) with one
          size per number, and colour-free objects are blue. The image is then a function of the
          caption and the background, which is what a tiny model whose sampler draws every bit of a
          scale independently can follow (the embedded demo's Infinity; see ``configs/demo.py``).
          ``backgrounds`` restricts the background palette (the demo uses one).

Categories (``index % 6`` picks the category, so any window of 6 consecutive indices is balanced)

  ================  ===========================================  ==================================
  category          caption                                      passes (see shapes_eval)
  ================  ===========================================  ==================================
  single_object     "a circle"                                   >= 1 circle (any colour)
  two_object        "a circle and a square"                      >= 1 of each (any colour)
  counting          "three green triangles" (one .. four)        exactly n green triangles
  colors            "a red circle"                               >= 1 red circle
  position          "a red circle to the left of a blue square"  some red circle is left of some
                    (also: to the right of / above / below)      blue square
  color_attr        "a red circle and a blue square"             both, with the right bindings
                    (colours differ and shapes differ)
  ================  ===========================================  ==================================

Held-out prompts (:func:`heldout_prompts`): 86 captions the training stream never emits verbatim
(GenEval-style: every word, shape and colour is seen in training, the held-out combination is not):

* :data:`HELDOUT_SINGLE`: shapes never captioned alone ("a triangle") in training (they do
  appear with a colour, a count or a partner);
* :data:`HELDOUT_SHAPE_PAIRS`: unordered shape pairs never captioned as a colour-free two_object;
* :data:`HELDOUT_PAIRS`: six (colour, shape) pairs (one per colour, every shape covered) never
  captioned alone, neither as "a red star" (colors) nor as "one red star" (counting); they appear
  in training only with a count of 2-4, a partner or a relation;
* counting: for every count 2-4, six more (colour, shape) pairs are held out at that count only;
* position and color_attr: fixed random two-object captions (6 per relation, 24 colour
  bindings), each naming at least one of :data:`HELDOUT_PAIRS`.

:func:`is_heldout` tells, and the training sampler redraws any prompt it would emit.

Spec (JSON-serialisable)::

    {"category": "position",
     "objects": [{"shape": "circle", "color": "red", "count": 1},      # color None: any colour
                 {"shape": "square", "color": "blue", "count": 1}],
     "relation": {"type": "left_of", "subject": 0, "object": 1},      # or None
     # layout, added by sample()/layout(); render() invents one (from its seed) when absent:
     "background": "white",
     "instances": [{"object": 0, "shape": "circle", "color": "red", "center": [x, y], "size": s}, ...]}

``center`` is in [0, 1] image units (x to the right, y down) and ``size`` the side of the square
box the object is drawn in (image units), so one spec renders at any resolution.
"""
from __future__ import annotations

import copy
import functools
import itertools
import json
import math
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles",
                           "star": "stars", "cross": "crosses"}
#: Object palette (RGB). The closest pair (blue, purple) is ~140 apart in RGB.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (240, 210, 20),
    "green": (30, 160, 50),
    "cyan": (20, 200, 220),
    "blue": (30, 60, 220),
    "purple": (170, 40, 200),
}
#: Background palette (RGB); at least ~170 away from every object colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "light gray": (205, 205, 205),
    "dark gray": (50, 50, 50),
    "black": (10, 10, 10),
}
CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBERS: tuple[str, ...] = ("one", "two", "three", "four")
#: relation type -> caption phrase; the subject (object 0) stands in this relation to object 1.
RELATIONS: dict[str, str] = {"left_of": "to the left of", "right_of": "to the right of",
                             "above": "above", "below": "below"}

#: (colour, shape) pairs never captioned alone in training (colors / counting at 1): one per colour,
#: every shape covered.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("red", "star"), ("yellow", "square"), ("green", "circle"),
    ("cyan", "triangle"), ("blue", "cross"), ("purple", "circle"),
})
#: Shapes never captioned alone (colour-free single_object) in training.
HELDOUT_SINGLE: frozenset[str] = frozenset({"triangle", "star"})
#: Unordered shape pairs never captioned as a colour-free two_object in training.
HELDOUT_SHAPE_PAIRS: frozenset[frozenset[str]] = frozenset({
    frozenset({"circle", "star"}), frozenset({"square", "triangle"}), frozenset({"cross", "circle"}),
})

#: Every (colour, shape) pair: all of them are drawn in training.
ALLOWED_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
_TRAIN_SINGLE = tuple(s for s in SHAPES if s not in HELDOUT_SINGLE)
_TRAIN_SHAPE_PAIRS = tuple((a, b) for a in SHAPES for b in SHAPES
                           if a != b and frozenset({a, b}) not in HELDOUT_SHAPE_PAIRS)

# Layout constants (image units).
_MARGIN = 0.04          # min distance from an object's box to the image border
_GAP = 0.06             # min gap between two objects' boxes (Chebyshev)
_SIZE_RANGE = {1: (0.34, 0.50), 2: (0.26, 0.36), 3: (0.23, 0.30), 4: (0.22, 0.27)}  # "free" layout
#: "lattice" layout: object sizes (box side, image units) by the number of objects, and centres on
#: multiples of 1/_LATTICE (4 px at 32x32): an object then looks the same wherever it is, up to a
#: whole-step shift, which is what lets a tiny model learn crisp shapes in minutes.
_LATTICE_SIZES = {1: (0.4375, 0.5), 2: (0.3125, 0.375), 3: (0.25, 0.3125), 4: (0.25,)}
_LATTICE = 8
LAYOUTS: tuple[str, ...] = ("free", "lattice", "canonical")
#: "canonical" layout: the colour of colour-free objects, and the centres (image units) and size of
#: the objects by their number. Two objects go in reading order (the first named on the left) unless a
#: relation says otherwise; "above"/"below" stack them vertically.
_CANONICAL_COLOR = "blue"
_CANONICAL = {
    1: (((0.5, 0.5),), 0.5),
    2: (((0.25, 0.5), (0.75, 0.5)), 0.375),
    3: (((0.5, 0.25), (0.25, 0.75), (0.75, 0.75)), 0.3125),
    4: (((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)), 0.3125),
}
_CANONICAL_VERTICAL = ((0.5, 0.25), (0.5, 0.75))
_POS_MIN_D = 0.28       # position: min centre displacement along the relation's axis
_POS_MAX_ORTHO = 0.5    # position: |orthogonal displacement| <= this * axis displacement
_SUPERSAMPLE = 4


# ----------------------------------------------------------------------------------- captions --

def _phrase(obj: dict) -> str:
    """'a red circle' / 'three green triangles' / 'a circle' for one object group."""
    n, shape, color = obj.get("count", 1), obj["shape"], obj.get("color")
    noun = PLURALS[shape] if n > 1 else shape
    words = [noun] if color is None else [color, noun]
    return " ".join([("a" if n == 1 else NUMBERS[n - 1])] + words)


def caption_for(spec: dict) -> str:
    """The canonical caption of a spec (a pure function of category, objects and relation)."""
    cat, objs = spec["category"], spec["objects"]
    if cat == "counting":
        o = objs[0]
        n = o["count"]
        noun = PLURALS[o["shape"]] if n > 1 else o["shape"]
        return " ".join([NUMBERS[n - 1]] + ([o["color"]] if o.get("color") else []) + [noun])
    if cat in ("single_object", "colors"):
        return _phrase(objs[0])
    if cat in ("two_object", "color_attr"):
        return f"{_phrase(objs[0])} and {_phrase(objs[1])}"
    if cat == "position":
        rel = spec["relation"]
        a, b = objs[rel["subject"]], objs[rel["object"]]
        return f"{_phrase(a)} {RELATIONS[rel['type']]} {_phrase(b)}"
    raise ValueError(f"unknown category {cat!r}")


def _obj(shape: str, color: str | None, count: int = 1) -> dict:
    return {"shape": shape, "color": color, "count": int(count)}


def make_spec(category: str, objects: Sequence[dict], relation: dict | None = None) -> dict:
    """A prompt-level spec (no layout). ``objects``: dicts with shape, color (or None), count."""
    return {"category": category, "objects": [dict(_obj(o["shape"], o.get("color"), o.get("count", 1)))
                                              for o in objects],
            "relation": None if relation is None else dict(relation)}


def prompt_spec(spec: dict) -> dict:
    """The prompt-level part of a spec (drops the layout: background, instances)."""
    return make_spec(spec["category"], spec["objects"], spec.get("relation"))


def is_heldout(spec: dict) -> bool:
    """Whether a prompt spec's caption is one of the held-out prompts (the training stream never emits it)."""
    cat, objs = spec["category"], spec["objects"]
    if cat == "single_object":
        return objs[0]["shape"] in HELDOUT_SINGLE
    if cat == "two_object":
        return frozenset(o["shape"] for o in objs) in HELDOUT_SHAPE_PAIRS
    return caption_for(spec) in _heldout_captions()


def _rng(seed: int, index: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(salt), int(seed) & 0xFFFFFFFF, int(index)]))


def sample_prompt(index: int, seed: int = 0) -> tuple[str, dict, str]:
    """The (caption, prompt spec, category) of training item ``index`` (fast: nothing is drawn).

    ``index % 6`` picks the category; everything else comes from ``(seed, index)``.
    """
    if index < 0:
        raise IndexError(f"index must be non-negative, got {index}")
    cat = CATEGORIES[index % len(CATEGORIES)]
    rng = _rng(seed, index, salt=1)

    while True:  # redraw the (rare) held-out captions
        spec = _draw_prompt(cat, rng)
        if not is_heldout(spec):
            return caption_for(spec), spec, cat


def _draw_prompt(cat: str, rng: np.random.Generator) -> dict:
    def pair() -> tuple[str, str]:
        return ALLOWED_PAIRS[rng.integers(len(ALLOWED_PAIRS))]

    if cat == "single_object":
        return make_spec(cat, [_obj(_TRAIN_SINGLE[rng.integers(len(_TRAIN_SINGLE))], None)])
    if cat == "two_object":
        a, b = _TRAIN_SHAPE_PAIRS[rng.integers(len(_TRAIN_SHAPE_PAIRS))]
        return make_spec(cat, [_obj(a, None), _obj(b, None)])
    if cat == "counting":
        c, s = pair()
        return make_spec(cat, [_obj(s, c, int(rng.integers(1, 5)))])
    if cat == "colors":
        c, s = pair()
        return make_spec(cat, [_obj(s, c)])
    if cat == "position":
        (c1, s1), (c2, s2) = pair(), pair()
        while (c1, s1) == (c2, s2):
            c2, s2 = pair()
        rel = tuple(RELATIONS)[rng.integers(len(RELATIONS))]
        return make_spec(cat, [_obj(s1, c1), _obj(s2, c2)], {"type": rel, "subject": 0, "object": 1})
    (c1, s1), (c2, s2) = pair(), pair()  # color_attr
    while c1 == c2 or s1 == s2:
        c2, s2 = pair()
    return make_spec(cat, [_obj(s1, c1), _obj(s2, c2)])


def caption_stream(seed: int = 0, start: int = 0, stop: int | None = None) -> Iterator[str]:
    """Training captions of items ``start, start+1, ...`` (endless if ``stop`` is None); for SentencePiece."""
    i = start
    while stop is None or i < stop:
        yield sample_prompt(i, seed)[0]
        i += 1


# ------------------------------------------------------------------------------------- layout --

def _overlaps(c1, s1, c2, s2, gap=_GAP) -> bool:
    return max(abs(c1[0] - c2[0]), abs(c1[1] - c2[1])) < (s1 + s2) / 2 + gap


def _relation_ok(rel: str, a, b, min_d: float = _POS_MIN_D) -> bool:
    """Centre ``a`` stands in ``rel`` to centre ``b`` clearly (layout-time rule, stricter than eval)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    d, o = {"left_of": (dx, dy), "right_of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[rel]
    return d >= min_d and abs(o) <= _POS_MAX_ORTHO * d


def _check_style(style: str, backgrounds) -> tuple[str, ...]:
    if style not in LAYOUTS:
        raise ValueError(f"layout style must be one of {LAYOUTS}, got {style!r}")
    bgs = tuple(BACKGROUNDS) if not backgrounds else tuple(backgrounds)
    bad = [b for b in bgs if b not in BACKGROUNDS]
    if bad:
        raise ValueError(f"unknown backgrounds {bad}; choose from {tuple(BACKGROUNDS)}")
    return bgs


def layout(spec: dict, seed: int = 0, style: str = "free", backgrounds: Sequence[str] | None = None) -> dict:
    """A copy of ``spec`` with a random ``background`` and non-overlapping ``instances``.

    Colour-free objects get a random palette colour ("canonical": blue). Position
    specs place the subject clearly on the named side of the object (axis displacement >= 0.28,
    orthogonal <= half of that). ``style``: "free", "lattice" or "canonical" (see the module docstring);
    ``backgrounds``: names to draw the background from (default: all of :data:`BACKGROUNDS`).
    """
    bgs = _check_style(style, backgrounds)
    rng = _rng(seed, 0, salt=2) if not isinstance(seed, np.random.Generator) else seed
    out = copy.deepcopy(prompt_spec(spec))
    out["background"] = bgs[rng.integers(len(bgs))]
    kinds = []
    for k, o in enumerate(out["objects"]):
        for _ in range(o["count"]):
            color = o["color"]
            if color is None:
                color = _CANONICAL_COLOR if style == "canonical" else tuple(COLORS)[rng.integers(len(COLORS))]
            kinds.append((k, o["shape"], color))
    n = len(kinds)
    if style == "canonical":
        out["instances"] = _canonical_instances(kinds, out.get("relation"))
        return out
    lattice = style == "lattice"
    rel = out.get("relation")
    for attempt in range(1000):
        if lattice:
            choices = _LATTICE_SIZES[min(n, 4)]
            sizes = np.asarray(choices)[rng.integers(len(choices), size=n)]
        else:
            lo, hi = _SIZE_RANGE[min(n, 4)]
            sizes = rng.uniform(lo, hi, size=n) * 0.97 ** (attempt // 50)
        centers = []
        ok = True
        for i in range(n):
            half = sizes[i] / 2 + _MARGIN
            if lattice:
                lo_i, hi_i = math.ceil(half * _LATTICE - 1e-9), math.floor((1 - half) * _LATTICE + 1e-9)
            for _ in range(100):
                c = (rng.integers(lo_i, hi_i + 1, size=2) / _LATTICE if lattice
                     else rng.uniform(half, 1 - half, size=2))
                if all(not _overlaps(c, sizes[i], centers[j], sizes[j]) for j in range(i)):
                    break
            else:
                ok = False
                break
            centers.append(c)
        if not ok:
            continue
        if rel is not None:
            sub = [i for i, kd in enumerate(kinds) if kd[0] == rel["subject"]]
            obj = [i for i, kd in enumerate(kinds) if kd[0] == rel["object"]]
            if not all(_relation_ok(rel["type"], centers[a], centers[b]) for a in sub for b in obj):
                continue
        break
    else:  # pragma: no cover - the size ranges leave plenty of room
        raise RuntimeError(f"could not lay out {spec}")
    out["instances"] = [{"object": k, "shape": s, "color": c, "center": [round(float(x), 5), round(float(y), 5)],
                         "size": round(float(z), 5)}
                        for (k, s, c), (x, y), z in zip(kinds, centers, sizes, strict=True)]
    return out


def _canonical_instances(kinds: list[tuple[int, str, str]], rel: dict | None) -> list[dict]:
    """The "canonical" layout's instances of ``kinds`` ((object index, shape, colour) per instance)."""
    if len(kinds) not in _CANONICAL or (rel is not None and len(kinds) != 2):
        raise ValueError(f"the canonical layout places 1-4 objects, and relations between two single objects; "
                         f"got {len(kinds)} objects{' with a relation' if rel is not None else ''}")
    centers, size = _CANONICAL[len(kinds)]
    if rel is not None:  # two single objects: the subject goes on the named side of the object
        sub, obj = {"left_of": (0, 1), "right_of": (1, 0), "above": (0, 1), "below": (1, 0)}[rel["type"]]
        slots = _CANONICAL_VERTICAL if rel["type"] in ("above", "below") else centers
        centers = [None, None]
        centers[rel["subject"]], centers[rel["object"]] = slots[sub], slots[obj]
    return [{"object": k, "shape": s, "color": c, "center": [float(x), float(y)], "size": float(size)}
            for (k, s, c), (x, y) in zip(kinds, centers, strict=True)]


# ------------------------------------------------------------------------------------ drawing --

@functools.lru_cache(maxsize=None)
def _unit_polygon(shape: str) -> tuple[tuple[float, float], ...] | None:
    """The outline of ``shape`` normalised to fill the unit box [0,1]^2 (x right, y down); None: ellipse."""
    if shape == "circle":
        return None
    if shape == "square":
        pts = [(0, 0), (1, 0), (1, 1), (0, 1)]
    elif shape == "triangle":
        pts = [(0.5, 0), (1, 1), (0, 1)]
    elif shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.5
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
    elif shape == "cross":
        t = 0.19  # half arm width
        a, b = 0.5 - t, 0.5 + t
        pts = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, y0, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return tuple(((x - x0) / w, (y - y0) / h) for x, y in pts)


#: Box (width, height) of each shape relative to its ``size`` (the square it is drawn in).
_ASPECT = {"circle": (1.0, 1.0), "square": (0.88, 0.88), "triangle": (1.0, 0.9), "star": (1.0, 0.951),
           "cross": (1.0, 1.0)}


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    x0, y0, x1, y1 = box
    poly = _unit_polygon(shape)
    if poly is None:
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    else:
        draw.polygon([(x0 + u * (x1 - x0), y0 + v * (y1 - y0)) for u, v in poly], fill=fill)


def shape_mask(shape: str, height: int, width: int) -> np.ndarray:
    """Anti-aliased coverage ``(height, width)`` float32 in [0,1] of ``shape`` stretched to fill the box."""
    ss = _SUPERSAMPLE
    img = Image.new("L", (width * ss, height * ss), 0)
    _draw(ImageDraw.Draw(img), shape, (0, 0, width * ss, height * ss), 255)
    return np.asarray(img.reduce(ss), np.float32) / 255.0


def render(spec: dict, size: int = 64, seed: int = 0, style: str = "free",
           backgrounds: Sequence[str] | None = None) -> np.ndarray:
    """Render ``spec`` to a ``(size, size, 3)`` uint8 image.

    Uses the spec's layout (``background``, ``instances``) when present, else lays one out from
    ``seed``, ``style`` and ``backgrounds`` (any palette colour for colour-free objects). Edges are
    anti-aliased (4x supersampling).
    """
    if "instances" not in spec or "background" not in spec:
        spec = layout(spec, seed, style, backgrounds)
    ss = _SUPERSAMPLE
    big = size * ss
    img = Image.new("RGB", (big, big), BACKGROUNDS[spec["background"]])
    draw = ImageDraw.Draw(img)
    for inst in spec["instances"]:
        (cx, cy), z = inst["center"], inst["size"]
        ax, ay = _ASPECT[inst["shape"]]
        hw, hh = z * ax * big / 2, z * ay * big / 2
        box = (cx * big - hw, cy * big - hh, cx * big + hw, cy * big + hh)
        _draw(draw, inst["shape"], box, COLORS[inst["color"]])
    return np.asarray(img.reduce(ss), np.uint8)


# ------------------------------------------------------------------------------------ samples --

def sample(index: int, size: int = 64, seed: int = 0, style: str = "free",
           backgrounds: Sequence[str] | None = None) -> dict:
    """Training item ``index``: ``dict(image (size, size, 3) uint8, caption str, spec dict, category str)``."""
    caption, spec, cat = sample_prompt(index, seed)
    spec = layout(spec, _rng(seed, index, salt=3), style, backgrounds)
    return {"image": render(spec, size), "caption": caption, "spec": spec, "category": cat}


class ShapesSource:
    """Grain-compatible random-access source of :func:`sample` items (endless: ``len`` is 2**31 - 1).

    ``ShapesSource(size=64, seed=0)[i]`` is a pure function of ``(size, seed, i)``; picklable, so it
    works with grain's multiprocess workers. With ``spec_format="json"`` (or None) items batch
    directly: image ``(B, size, size, 3)`` uint8, caption/category/spec ``(B,)`` str. Example::

        ds = grain.MapDataset.source(ShapesSource(64, spec_format="json")).shuffle(seed=0).batch(32)
    """

    def __init__(self, size: int = 64, seed: int = 0, length: int = 2**31 - 1, spec_format: str | None = "dict",
                 style: str = "free", backgrounds: Sequence[str] | None = None):
        """``spec_format``: "dict" (as :func:`sample`), "json" (a JSON string, batchable) or None (no spec);
        ``style``, ``backgrounds``: as :func:`layout`."""
        if spec_format not in ("dict", "json", None):
            raise ValueError(f"spec_format must be 'dict', 'json' or None, got {spec_format!r}")
        self.size, self.seed, self.length, self.spec_format = int(size), int(seed), int(length), spec_format
        self.backgrounds = _check_style(style, backgrounds)
        self.style = style

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(index)
        item = sample(index, self.size, self.seed, self.style, self.backgrounds)
        if self.spec_format is None:
            del item["spec"]
        elif self.spec_format == "json":
            item["spec"] = json.dumps(item["spec"])
        return item

    def __repr__(self) -> str:
        return (f"ShapesSource(size={self.size}, seed={self.seed}, length={self.length}, "
                f"spec_format={self.spec_format!r}, style={self.style!r}, backgrounds={self.backgrounds!r})")


# ---------------------------------------------------------------------------------- held out --

def _pick(items: list, k: int, rng: np.random.Generator) -> list:
    if len(items) <= k:
        return items
    idx = np.sort(rng.choice(len(items), size=k, replace=False))
    return [items[i] for i in idx]


@functools.lru_cache(maxsize=None)
def _heldout() -> tuple[tuple[str, str, str], ...]:
    rng = np.random.default_rng(20240607)
    out: list[dict] = []
    # single_object: the held-out shapes, colour-free.
    out += [make_spec("single_object", [_obj(s, None)]) for s in SHAPES if s in HELDOUT_SINGLE]
    # two_object: both orders of every held-out shape pair.
    out += [make_spec("two_object", [_obj(a, None), _obj(b, None)]) for a in SHAPES for b in SHAPES
            if a != b and frozenset({a, b}) in HELDOUT_SHAPE_PAIRS]
    held = sorted(HELDOUT_PAIRS, key=lambda p: (list(COLORS).index(p[0]), SHAPES.index(p[1])))
    # counting: the held-out pairs at 1; six other pairs at each of 2, 3, 4 (each pair held out at one
    # count at most, so every pair is still counted in training).
    others = [p for p in ALLOWED_PAIRS if p not in HELDOUT_PAIRS]
    picked = [others[i] for i in rng.permutation(len(others))[:18]]
    out += [make_spec("counting", [_obj(s, c, 1)]) for c, s in held]
    out += [make_spec("counting", [_obj(s, c, n)]) for n in (2, 3, 4)
            for c, s in sorted(picked[6 * (n - 2):6 * (n - 1)], key=ALLOWED_PAIRS.index)]
    # colors: the held-out pairs.
    out += [make_spec("colors", [_obj(s, c)]) for c, s in held]
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    # position: 6 per relation, each with >= 1 held-out pair.
    for rel in RELATIONS:
        cands = [make_spec("position", [_obj(s1, c1), _obj(s2, c2)], {"type": rel, "subject": 0, "object": 1})
                 for (c1, s1), (c2, s2) in itertools.permutations(pairs, 2)
                 if (c1, s1) in HELDOUT_PAIRS or (c2, s2) in HELDOUT_PAIRS]
        out += _pick(cands, 6, rng)
    # color_attr: 24 with different colours and shapes, >= 1 held-out pair.
    cands = [make_spec("color_attr", [_obj(s1, c1), _obj(s2, c2)])
             for (c1, s1), (c2, s2) in itertools.permutations(pairs, 2)
             if c1 != c2 and s1 != s2 and ((c1, s1) in HELDOUT_PAIRS or (c2, s2) in HELDOUT_PAIRS)]
    out += _pick(cands, 24, rng)
    return tuple((caption_for(s), json.dumps(s), s["category"]) for s in out)


@functools.lru_cache(maxsize=None)
def _heldout_captions() -> frozenset[str]:
    return frozenset(c for c, _, _ in _heldout())


def heldout_prompts() -> list[tuple[str, dict, str]]:
    """The fixed held-out prompt set: a list of (caption, spec, category), never emitted in training.

    Sizes: single_object 2, two_object 6, counting 24, colors 6, position 24, color_attr 24 (86 in
    all; GenEval-style scores average categories, so their sizes do not weight the overall).
    """
    return [(c, json.loads(s), cat) for c, s, cat in _heldout()]


def render_heldout(size: int = 64, seeds: Sequence[int] = (0,), style: str = "free",
                   backgrounds: Sequence[str] | None = None) -> tuple[np.ndarray, list[dict]]:
    """True renders of every held-out prompt for each seed: images ``(P*len(seeds), size, size, 3)``
    uint8 and their specs (prompt-major, seed-minor); ``style``, ``backgrounds`` as :func:`layout`."""
    imgs, specs = [], []
    for p, (_, spec, _) in enumerate(heldout_prompts()):
        for seed in seeds:
            imgs.append(render(spec, size, seed=1000 * p + int(seed), style=style, backgrounds=backgrounds))
            specs.append(spec)
    return np.stack(imgs), specs


# ------------------------------------------------------------------------- config factories --

def shapes_source(size: int = 64, seed: int = 0, length: int = 200_000, style: str = "free",
                  backgrounds: Sequence[str] | None = None) -> ShapesSource:
    """A finite window of the endless stream without specs (the demo's training source; the data
    factory ``"shapes"`` of :mod:`infinity_jax.data.sources`)."""
    return ShapesSource(size=int(size), seed=int(seed), length=int(length), spec_format=None, style=str(style),
                        backgrounds=tuple(backgrounds) if backgrounds else None)


def heldout_images(size: int = 64, seeds: int = 1, style: str = "free",
                   backgrounds: Sequence[str] | None = None) -> np.ndarray:
    """True renders of the held-out prompts ``(86 * seeds, size, size, 3)`` uint8 (a tokenizer's
    held-out PSNR set; the image factory ``"shapes_heldout"`` of :mod:`infinity_jax.data.sources`)."""
    return render_heldout(int(size), range(int(seeds)), str(style), tuple(backgrounds) if backgrounds else None)[0]


__all__ = [
    "SHAPES", "COLORS", "BACKGROUNDS", "CATEGORIES", "RELATIONS", "HELDOUT_PAIRS", "HELDOUT_SINGLE",
    "HELDOUT_SHAPE_PAIRS", "ShapesSource", "sample", "sample_prompt", "caption_stream", "caption_for",
    "make_spec", "prompt_spec", "is_heldout", "layout", "render", "shape_mask", "heldout_prompts",
    "render_heldout", "shapes_source", "heldout_images",
]
