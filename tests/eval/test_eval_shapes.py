"""The GenEval-like ``shapes`` evaluator: ~1.0 on true renders of the held-out prompts, ~0 on noise."""
import numpy as np
import pytest

from infinity_jax.data import shapes as S
from infinity_jax.eval import shapes_eval as E


@pytest.mark.parametrize("size,seeds", [(64, 4), (128, 2)])
def test_true_renders_of_heldout_prompts(size, seeds):
    imgs, specs = E.render_heldout(size, range(seeds))
    assert imgs.shape == (86 * seeds, size, size, 3) and imgs.dtype == np.uint8
    res = E.evaluate(imgs, specs)
    print(f"\ntrue renders {size}px x{seeds} seeds: {E.summary(res)}")
    assert set(res["per_category"]) == set(S.CATEGORIES)
    assert all(v >= 0.98 for v in res["per_category"].values()), res["per_category"]
    assert res["overall"] >= 0.98


def test_true_renders_of_the_demo_stream_at_32px():
    """The demo trains and scores at 32x32 on the lattice layout: the evaluator must still pass the truth."""
    imgs, specs = E.render_heldout(32, range(2), "lattice", ("light gray",))
    res = E.evaluate(imgs, specs)
    print(f"\ntrue renders 32px lattice: {E.summary(res)}")
    assert res["overall"] >= 0.98 and min(res["per_category"].values()) >= 0.95, res["per_category"]


def test_true_renders_of_the_canonical_stream_at_32px():
    imgs, specs = E.render_heldout(32, range(1), "canonical", ("light gray",))
    res = E.evaluate(imgs, specs)
    assert res["overall"] >= 0.98 and min(res["per_category"].values()) >= 0.95, res["per_category"]


@pytest.mark.parametrize("kind", ["uniform", "blobs"])
def test_noise_is_near_chance(kind):
    _, specs = E.render_heldout(64, range(2))
    res = E.evaluate(E.noise_images(kind, len(specs), 64, seed=1), specs)
    print(f"\n{kind} noise: {E.summary(res)}")
    assert res["overall"] <= 0.1


def test_mismatched_real_images_are_low():
    """Real dataset images scored against unrelated held-out prompts (the evaluator's chance level)."""
    _, specs = E.render_heldout(64, range(2))
    imgs = [S.sample(i, 64)["image"] for i in range(len(specs))]
    res = E.evaluate(imgs, specs)
    print(f"\nmismatched training images: {E.summary(res)}")
    assert res["overall"] <= 0.15


def test_detections_recover_training_layouts():
    for i in range(300):
        it = S.sample(i, 64)
        dets = E.detect(it["image"])
        want = sorted((d["shape"], d["color"]) for d in it["spec"]["instances"])
        assert sorted((d["shape"], d["color"]) for d in dets) == want, (i, it["caption"])
        for inst in it["spec"]["instances"]:  # centroids land near the drawn centres
            best = min(np.hypot(*(np.subtract(d["center"], inst["center"]))) for d in dets)
            assert best < 0.03


def _render(objs, relation=None, category="color_attr", seed=0, size=64):
    return S.render(S.make_spec(category, objs, relation), size, seed)


def test_rules_reject_wrong_images():
    red_circle, blue_square = {"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}
    img = _render([red_circle, blue_square])
    ok = S.make_spec("color_attr", [red_circle, blue_square])
    swapped = S.make_spec("color_attr", [{"shape": "circle", "color": "blue"}, {"shape": "square", "color": "red"}])
    r = E.evaluate([img, img], [ok, swapped])
    assert [p["passed"] for p in r["per_image"]] == [True, False]
    # counting is exact
    three = S.make_spec("counting", [{"shape": "star", "color": "green", "count": 3}])
    imgs = [S.render(three, 64, seed=s) for s in range(3)]
    specs = [S.make_spec("counting", [{"shape": "star", "color": "green", "count": n}]) for n in (2, 3, 4)]
    assert [p["passed"] for p in E.evaluate(imgs, specs)["per_image"]] == [False, True, False]
    # relations: the rendered one holds, its opposite does not
    for rel, opp in [("left_of", "right_of"), ("above", "below")]:
        spec = S.make_spec("position", [red_circle, blue_square], {"type": rel, "subject": 0, "object": 1})
        img = S.render(spec, 64, seed=4)
        flipped = S.make_spec("position", [red_circle, blue_square], {"type": opp, "subject": 0, "object": 1})
        assert [p["passed"] for p in E.evaluate([img, img], [spec, flipped])["per_image"]] == [True, False]
    # colour-free prompts accept any colour, but not the wrong shape
    img = _render([{"shape": "triangle", "color": "cyan"}], category="colors")
    specs = [S.make_spec("single_object", [{"shape": s}]) for s in ("triangle", "circle")]
    assert [p["passed"] for p in E.evaluate(np.stack([img, img]), specs)["per_image"]] == [True, False]


def test_evaluate_api_and_report(tmp_path):
    imgs, specs = E.render_heldout(64, [0])
    res = E.evaluate(list(imgs), specs)
    assert set(res) >= {"overall", "per_category", "per_image", "counts"}
    assert len(res["per_image"]) == len(specs)
    p = res["per_image"][0]
    assert {"caption", "category", "passed", "reason", "detections"} <= set(p)
    jpath, mpath = E.write_report(res, tmp_path, "r", extra={"step": 1})
    assert jpath.exists() and "| **overall**" in mpath.read_text()
    with pytest.raises(ValueError):
        E.evaluate(imgs[:2], specs[:3])
    with pytest.raises(ValueError):
        E.evaluate(imgs[:1].astype(np.float32), specs[:1])


def test_demo_cli(tmp_path):
    E.main(["--demo", str(tmp_path), "--seeds", "1"])
    assert (tmp_path / "heldout_grid.png").stat().st_size > 10_000
    assert (tmp_path / "heldout_true_renders.md").exists()
