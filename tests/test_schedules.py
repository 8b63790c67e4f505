"""Scale schedules and aspect templates against the table of the architecture note (section 2)."""
import pytest

from infinity_jax import schedules as S

PNS = ("0.06M", "0.25M", "0.60M", "1M")

# template (h/w >= 1) -> per resolution (H pixels, W pixels, sequence length L); from the note.
TABLE = {
    1.0: [(256, 256, 521), (512, 512, 2521), (768, 768, 6425), (1024, 1024, 10521)],
    1.25: [(320, 256, 614), (560, 448, 2814), (880, 704, 6854), (1120, 896, 10774)],
    1.333: [(320, 240, 665), (576, 432, 2657), (960, 720, 7085), (1152, 864, 10973)],
    1.5: [(336, 224, 533), (624, 416, 2759), (1008, 672, 6941), (1248, 832, 10997)],
    1.75: [(336, 192, 472), (672, 384, 2628), (1120, 640, 7220), (1344, 768, 11252)],
    2.0: [(352, 176, 451), (736, 368, 2681), (1184, 592, 7219), (1440, 720, 11269)],
    2.5: [(400, 160, 555), (800, 320, 2555), (1280, 512, 6805), (1600, 640, 10805)],
    3.0: [(432, 144, 509), (864, 288, 2588), (1440, 480, 7016), (1776, 592, 11123)],
}
INVERSE = {1.25: 0.8, 1.333: 0.75, 1.5: 0.666, 1.75: 0.571, 2.0: 0.5, 2.5: 0.4, 3.0: 0.333}

ORDER = (1.0, 1.25, 0.8, 1.333, 0.75, 1.5, 0.666, 1.75, 0.571, 2.0, 0.5, 2.5, 0.4, 3.0, 0.333)


def _cases():
    for t, rows in TABLE.items():
        for pn, (H, W, L) in zip(PNS, rows):
            yield t, pn, (H, W), L
            if t in INVERSE:
                yield INVERSE[t], pn, (W, H), L


CASES = list(_cases())


def test_case_count():
    assert len(CASES) == 15 * 4


@pytest.mark.parametrize("template,pn,pixel,L", CASES)
def test_pixel_size_and_sequence_length(template, pn, pixel, L):
    s = S.get_schedule(template, pn)
    assert s.pixel == pixel
    assert s.seq_len == L == S.sequence_length(s.scales)
    assert s.num_scales == {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}[pn]
    assert all(t == 1 for t, _, _ in s.scales)
    assert s.scales[0] == (1, 1, 1)
    assert (s.scales[-1][1] * 16, s.scales[-1][2] * 16) == pixel
    # each resolution is a prefix of the 13-scale list
    full = S.get_schedule(template, "1M").scales
    assert full[: s.num_scales] == s.scales


def test_template_order():
    assert S.H_DIV_W_TEMPLATES == ORDER


def test_inverse_templates_swap_h_and_w():
    for t, inv in INVERSE.items():
        assert S.template_hws(inv) == [(w, h) for h, w in S.template_hws(t)]


def test_square_1m_grids():
    assert [h for _, h, _ in S.get_schedule(1.0, "1M").scales] == [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64]


def test_schedule_with_t():
    sched = S.get_schedule_with_t(1.0, "1M")
    assert [t for t, _, _ in sched] == [1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15, 17, 21]
    assert [(h, w) for _, h, w in sched] == S.template_hws(1.0)


@pytest.mark.parametrize("ratio,expected", [
    (1.0, 1.0), (1.1, 1.0), (1.2, 1.25), (0.85, 0.8), (0.5625, 0.571), (1.7778, 1.75), (1.9, 2.0),
    (0.43, 0.4), (0.47, 0.5), (2.8, 3.0), (10.0, 3.0), (0.05, 0.333)])
def test_nearest_template(ratio, expected):
    assert S.nearest_template(ratio) == expected


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_nearest_template_rejects(bad):
    with pytest.raises(S.ScheduleError):
        S.nearest_template(bad)


def test_parse_aspect_ratio_width_by_height():
    assert S.parse_aspect_ratio("16:9") == pytest.approx(9 / 16)
    assert S.parse_aspect_ratio("9:16") == pytest.approx(16 / 9)
    assert S.parse_aspect_ratio("1:1") == 1.0
    assert S.parse_aspect_ratio(" 4 : 3 ") == pytest.approx(0.75)
    assert S.parse_aspect_ratio("0.5625") == 0.5625
    assert S.parse_aspect_ratio("h/w=0.5") == 0.5
    assert S.parse_aspect_ratio(2) == 2.0
    for bad in ("abc", "16x9", "0:9", "", "1:2:3"):
        with pytest.raises(S.ScheduleError):
            S.parse_aspect_ratio(bad)


def test_select_schedule():
    s = S.select_schedule("16:9", "1M")  # landscape: wider than tall
    assert s.h_div_w == 0.571 and s.pixel == (768, 1344) and s.seq_len == 11252
    s = S.select_schedule("1:1", 512)
    assert s.pn == "0.25M" and s.pixel == (512, 512)
    s = S.select_schedule(1.0, "256")
    assert s.pn == "0.06M" and s.seq_len == 521
    assert S.select_schedule("3:4", "0.60M").pixel == (960, 720)


def test_select_schedule_errors():
    with pytest.raises(S.ScheduleError, match="unknown resolution"):
        S.select_schedule(1.0, "2M")
    with pytest.raises(S.ScheduleError, match="not supported"):
        S.select_schedule(1.0, 2048)
    with pytest.raises(S.ScheduleError, match="too far"):
        S.select_schedule("10:1", "1M")
    with pytest.raises(S.ScheduleError):
        S.template_hws(0.9)
    with pytest.raises(S.ScheduleError):
        S.get_schedule(1.0, "0.5M")


def test_helpers():
    sched = S.get_schedule(1.0, "0.06M").scales
    assert S.scale_offsets(sched) == [0, 1, 5, 21, 57, 121, 265, 521]
    assert S.normalize_schedule([(2, 2), (3, 4, 4)]) == ((1, 2, 2), (1, 4, 4))
    with pytest.raises(S.ScheduleError):
        S.normalize_schedule([(1, 0, 2)])
    assert S.rope_grid_for(sched) == (64, 64)
    assert S.rope_grid_for(S.get_schedule(0.5, "0.25M").scales) == (45, 90)
    assert S.rope_grid_for([(1, 1, 1), (1, 3, 5)]) == (3, 5)


def test_tokenizer_schedule_and_inverse():
    """Spatial patchify: the tokenizer grid is twice the transformer grid at every scale."""
    sched = S.get_schedule(1.0, "0.06M")
    doubled = S.tokenizer_schedule(sched, True)
    assert doubled[0] == (1, 2, 2) and doubled[-1] == (1, 32, 32) and len(doubled) == 7
    assert S.tokenizer_schedule(sched, False) == sched.scales
    assert S.transformer_schedule(doubled, True) == sched.scales
    assert S.transformer_schedule([(3, 4)], False) == ((1, 3, 4),)
    with pytest.raises(S.ScheduleError, match="divisible by 2"):
        S.transformer_schedule([(2, 2), (3, 4)], True)


def test_official_patchify_reads_every_section():
    assert S.official_patchify({"infinity": {"apply_spatial_patchify": 1}, "vae": {"patch_size": 8}})
    assert S.official_patchify({"config": {"vae": {"apply_spatial_patchify": True}}})
    assert S.official_patchify({"apply_spatial_patchify": 1, "depth": 2})
    assert not S.official_patchify({"infinity": {"depth": 2}, "vae": {}})
    with pytest.raises(ValueError, match="differently"):
        S.official_patchify({"infinity": {"apply_spatial_patchify": 1}, "vae": {"apply_spatial_patchify": 0}})
