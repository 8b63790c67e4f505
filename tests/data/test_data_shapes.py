"""The synthetic ``shapes`` captioned data source: determinism, spec/caption consistency, balance, held-out split."""
import collections
import json
import pickle

import numpy as np
import pytest

from infinity_jax.data import shapes as S


def test_determinism_and_random_access():
    a, b = S.sample(123, 64, seed=7), S.sample(123, 64, seed=7)
    assert np.array_equal(a["image"], b["image"]) and a["caption"] == b["caption"] and a["spec"] == b["spec"]
    assert not np.array_equal(a["image"], S.sample(123, 64, seed=8)["image"])
    assert not np.array_equal(a["image"], S.sample(124, 64, seed=7)["image"])
    src = S.ShapesSource(size=64, seed=7)
    assert len(src) == 2**31 - 1
    c = src[123]
    assert np.array_equal(c["image"], a["image"]) and c["caption"] == a["caption"]
    # out-of-order access gives the same items; the source pickles (grain workers)
    src2 = pickle.loads(pickle.dumps(src))
    assert [src2[i]["caption"] for i in (5, 1, 3)] == [src[i]["caption"] for i in (5, 1, 3)]
    assert src[-1]["caption"] == src[len(src) - 1]["caption"]
    with pytest.raises(IndexError):
        src[len(src)]
    big = S.sample(10**12, 64)  # endless: any non-negative index
    assert big["image"].shape == (64, 64, 3)
    with pytest.raises(IndexError):
        S.sample_prompt(-1)


def test_grain_batching():
    grain = pytest.importorskip("grain")
    ds = grain.MapDataset.source(S.ShapesSource(64, spec_format="json")).shuffle(seed=0).batch(6)
    b = ds[0]
    assert b["image"].shape == (6, 64, 64, 3) and b["image"].dtype == np.uint8
    assert b["caption"].shape == b["spec"].shape == (6,)
    assert all(S.caption_for(json.loads(sp)) == c for sp, c in zip(b["spec"], b["caption"], strict=True))
    assert "spec" not in S.ShapesSource(64, spec_format=None)[0]


@pytest.mark.parametrize("size", [64, 128, 256])
def test_image_sizes(size):
    it = S.sample(3, size)
    assert it["image"].shape == (size, size, 3) and it["image"].dtype == np.uint8
    # the background colour fills the corners
    assert tuple(it["image"][0, 0]) == S.BACKGROUNDS[it["spec"]["background"]]


def test_caption_spec_consistency():
    for i in range(600):
        it = S.sample(i, 64)
        spec, cap, cat = it["spec"], it["caption"], it["category"]
        assert json.loads(json.dumps(spec)) == spec
        assert spec["category"] == cat and S.caption_for(spec) == cap
        objs, inst = spec["objects"], spec["instances"]
        assert len(inst) == sum(o["count"] for o in objs)
        for k, o in enumerate(objs):
            mine = [d for d in inst if d["object"] == k]
            assert len(mine) == o["count"]
            assert all(d["shape"] == o["shape"] and (o["color"] is None or d["color"] == o["color"]) for d in mine)
        for d in inst:
            half = d["size"] / 2
            assert half <= d["center"][0] <= 1 - half and half <= d["center"][1] <= 1 - half
        for p in range(len(inst)):
            for q in range(p):
                assert not S._overlaps(inst[p]["center"], inst[p]["size"], inst[q]["center"], inst[q]["size"], 0.0)
        words = cap.split()
        if cat in ("single_object", "two_object"):
            assert all(o["color"] is None for o in objs) and not set(words) & set(S.COLORS)
        else:
            assert all(o["color"] in words for o in objs)
        if cat == "counting":
            assert words[0] == S.NUMBERS[objs[0]["count"] - 1]
        if cat in ("two_object", "color_attr"):
            assert objs[0]["shape"] != objs[1]["shape"]
        if cat == "color_attr":
            assert objs[0]["color"] != objs[1]["color"]
        if cat == "position":
            rel = spec["relation"]
            assert S.RELATIONS[rel["type"]] in cap
            a = inst[[d["object"] for d in inst].index(rel["subject"])]
            b = inst[[d["object"] for d in inst].index(rel["object"])]
            assert S._relation_ok(rel["type"], a["center"], b["center"])
        else:
            assert spec["relation"] is None


def test_category_coverage_and_balance():
    n = 6000
    prompts = [S.sample_prompt(i) for i in range(n)]
    counts = collections.Counter(cat for _, _, cat in prompts)
    assert counts == {c: n // 6 for c in S.CATEGORIES}
    # random indices (as a shuffled loader would draw) are balanced too
    rng = np.random.default_rng(0)
    rc = collections.Counter(S.sample_prompt(int(i))[2] for i in rng.integers(0, 2**31 - 1, 3000))
    assert all(abs(rc[c] / 3000 - 1 / 6) < 0.03 for c in S.CATEGORIES), rc
    by = collections.defaultdict(list)
    for _, spec, cat in prompts:
        by[cat].append(spec)
    assert {o["count"] for s in by["counting"] for o in s["objects"]} == {1, 2, 3, 4}
    assert {s["relation"]["type"] for s in by["position"]} == set(S.RELATIONS)
    for cat in ("counting", "colors", "position", "color_attr"):
        pairs = {(o["color"], o["shape"]) for s in by[cat] for o in s["objects"]}
        want = set(S.ALLOWED_PAIRS) - (S.HELDOUT_PAIRS if cat == "colors" else set())  # "a red star" is held out
        assert pairs == want, cat
    for cat in ("single_object", "two_object"):
        assert {o["shape"] for s in by[cat] for o in s["objects"]} >= set(S.SHAPES) - S.HELDOUT_SINGLE
    bgs = collections.Counter(S.sample(i)["spec"]["background"] for i in range(400))
    assert set(bgs) == set(S.BACKGROUNDS)


def test_heldout_set():
    held = S.heldout_prompts()
    assert held == S.heldout_prompts()  # fixed
    caps = [c for c, _, _ in held]
    assert len(caps) == len(set(caps)) == 86
    assert collections.Counter(cat for _, _, cat in held) == {
        "single_object": 2, "two_object": 6, "counting": 24, "colors": 6, "position": 24, "color_attr": 24}
    for cap, spec, cat in held:
        assert spec["category"] == cat and S.caption_for(spec) == cap and S.is_heldout(spec)
        assert "instances" not in spec


def test_heldout_never_emitted_in_training():
    held = {c for c, _, _ in S.heldout_prompts()}
    n = 20000
    train_words, train_pairs = set(), set()
    for i in range(n):
        cap, spec, _ = S.sample_prompt(i)
        assert cap not in held, (i, cap)
        assert not S.is_heldout(spec), (i, spec)
        train_words.update(cap.split())
        train_pairs.update((o["color"], o["shape"]) for o in spec["objects"] if o["color"])
        if spec["category"] in ("colors", "counting"):
            o = spec["objects"][0]
            assert o["count"] > 1 or (o["color"], o["shape"]) not in S.HELDOUT_PAIRS, cap
    # every word and every (colour, shape) pair of the held-out prompts is seen in training: only the
    # combinations are new (a tokenizer trained on the stream covers them)
    assert {w for c in held for w in c.split()} <= train_words
    held_pairs = {(o["color"], o["shape"]) for _, s, _ in S.heldout_prompts() for o in s["objects"] if o["color"]}
    assert S.HELDOUT_PAIRS <= held_pairs <= train_pairs
    assert S.sample(7)["spec"] == S.layout(S.sample_prompt(7)[1], S._rng(0, 7, salt=3))


def test_caption_stream():
    got = list(S.caption_stream(seed=3, start=10, stop=40))
    assert got == [S.sample_prompt(i, 3)[0] for i in range(10, 40)]
    assert all(isinstance(c, str) and c for c in got)


def test_render_spec_any_size_and_seed():
    _, spec, _ = S.heldout_prompts()[40]
    a, b = S.render(spec, 64, seed=1), S.render(spec, 64, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, S.render(spec, 64, seed=2))
    lay = S.layout(spec, 5)
    big, small = S.render(lay, 128).astype(np.float32), S.render(lay, 64).astype(np.float32)
    down = big.reshape(64, 2, 64, 2, 3).mean((1, 3))
    assert np.abs(down - small).mean() < 6  # the same layout at two resolutions


def test_lattice_layout_and_backgrounds():
    """The demo's stream: centres on the lattice, few sizes, one background; still valid layouts."""
    src = S.ShapesSource(size=32, seed=3, spec_format="dict", style="lattice", backgrounds=("light gray",))
    for i in range(300):
        spec = src[i]["spec"]
        inst = spec["instances"]
        assert spec["background"] == "light gray"
        for d in inst:
            assert all(abs(c * S._LATTICE - round(c * S._LATTICE)) < 1e-6 for c in d["center"])
            assert d["size"] in S._LATTICE_SIZES[min(len(inst), 4)]
            half = d["size"] / 2
            assert half <= d["center"][0] <= 1 - half and half <= d["center"][1] <= 1 - half
        for p in range(len(inst)):
            for q in range(p):
                assert not S._overlaps(inst[p]["center"], inst[p]["size"], inst[q]["center"], inst[q]["size"], 0.0)
        if spec["relation"] is not None:
            rel = spec["relation"]
            a = inst[[d["object"] for d in inst].index(rel["subject"])]
            b = inst[[d["object"] for d in inst].index(rel["object"])]
            assert S._relation_ok(rel["type"], a["center"], b["center"])
    # captions and categories are those of the default stream; only the pictures differ
    free = S.ShapesSource(size=32, seed=3, spec_format="dict")
    assert [src[i]["caption"] for i in range(30)] == [free[i]["caption"] for i in range(30)]
    assert any(free[i]["spec"]["instances"][0]["center"][0] * S._LATTICE % 1 > 1e-3 for i in range(30))


def test_canonical_layout_is_a_function_of_the_caption():
    """The "canonical" layout: fixed slots, reading order, relations honoured, blue colour-free objects."""
    src = S.ShapesSource(size=32, seed=3, spec_format="dict", style="canonical", backgrounds=("light gray",))
    seen: dict[str, bytes] = {}
    for i in range(300):
        item = src[i]
        spec, inst = item["spec"], item["spec"]["instances"]
        centers, size = S._CANONICAL[len(inst)]
        assert all(d["size"] == size for d in inst)
        for p in range(len(inst)):
            for q in range(p):
                assert not S._overlaps(inst[p]["center"], inst[p]["size"], inst[q]["center"], inst[q]["size"])
        for d, o in zip(inst, [o for o in spec["objects"] for _ in range(o["count"])], strict=True):
            assert d["color"] == (o["color"] or "blue")
        rel = spec["relation"]
        if rel is not None:
            a, b = (inst[[d["object"] for d in inst].index(rel[k])]["center"] for k in ("subject", "object"))
            assert S._relation_ok(rel["type"], a, b)
        elif len(spec["objects"]) == 2:  # reading order: the first named object is on the left
            assert inst[0]["center"][0] < inst[1]["center"][0]
        # the same caption always renders the same picture
        png = item["image"].tobytes()
        assert seen.setdefault(item["caption"], png) == png
    assert len(seen) < 300  # captions repeat in 300 items, and their pictures agree (above)
    # every relation puts the subject on its side
    for rel in S.RELATIONS:
        spec = S.make_spec("position", [{"shape": "circle", "color": "red"}, {"shape": "star", "color": "cyan"}],
                           {"type": rel, "subject": 0, "object": 1})
        inst = S.layout(spec, 0, "canonical")["instances"]
        assert S._relation_ok(rel, inst[0]["center"], inst[1]["center"]), rel
    with pytest.raises(ValueError, match="canonical layout places 1-4"):
        S.layout(S.make_spec("counting", [{"shape": "star", "color": "red", "count": 5}]), 0, "canonical")


def test_layout_style_errors():
    with pytest.raises(ValueError, match="layout style"):
        S.ShapesSource(style="grid")
    with pytest.raises(ValueError, match="unknown backgrounds"):
        S.layout(S.sample_prompt(0)[1], 0, "lattice", ("pink",))
