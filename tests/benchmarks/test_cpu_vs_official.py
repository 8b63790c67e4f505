"""The official CPU reference tables are read correctly by benchmarks/cpu_vs_official.py (no timing)."""
import importlib.util
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cpu_vs_official", ROOT / "benchmarks" / "cpu_vs_official.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def official(bench):
    if not bench.OFFICIAL_MD.exists():
        msg = f"official CPU table {bench.OFFICIAL_MD} not found (set INFINITY_JAX_SHARED)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return bench.read_official()


def test_sampling_rows_parsed(official):
    rows = {r["key"]: r for r in official["sampling"]}
    assert list(rows) == ["a 256² (0.06M) B=1", "a 256² (0.06M) B=4", "a 512² (0.25M) B=1", "a 1024² (1M) B=1"]
    a = rows["a 256² (0.06M) B=1"]
    assert (a["config"], a["res"], a["pn"], a["scales"], a["tokens"], a["B"]) == ("a", 256, "0.06M", 7, 521, 1)
    assert (a["ar_s"], a["decode_s"], a["total_s"]) == (0.033, 0.208, 0.240)
    big = rows["a 1024² (1M) B=1"]
    assert (big["scales"], big["tokens"], big["ar_s"], big["decode_s"], big["total_s"]) == (13, 10521, 0.994, 4.707, 5.701)
    for r in rows.values():  # the table's totals are AR loop + decode (to rounding)
        assert r["total_s"] == pytest.approx(r["ar_s"] + r["decode_s"], abs=2e-3)


def test_train_rows_parsed(official):
    rows = {r["key"]: r for r in official["train"]}
    assert list(rows) == ["a", "b", "c"]
    assert rows["a"] == {"config": "a", "key": "a", "encode_s": 0.225, "bsc_s": 0.005, "forward_s": 0.022,
                         "backward_s": 0.033, "update_s": 0.005, "model_step_s": 0.061, "total_s": 0.295,
                         "peak_rss_mb": 624.0}
    assert (rows["c"]["forward_s"], rows["c"]["backward_s"], rows["c"]["peak_rss_mb"]) == (1.176, 2.034, 3564.0)


def test_parser_rejects_a_file_without_the_tables(bench):
    with pytest.raises(ValueError, match="expected a sampling table"):
        bench.parse_official("# nothing\n\n| x | y |\n|---|---|\n| 1 | 2 |\n")


def test_comparison_table_ratio(bench):
    rows = [{"key": "a", "encode_s": 0.3, "total_s": 1.0}]
    lines = bench.comparison_table("config", rows, {"a": {"encode_s": 0.1, "total_s": 2.0}},
                                   (("encode_s", "VAE encode s"), ("total_s", "total s"), ("bsc_s", "BSC s")))
    assert lines[2:] == ["| a | VAE encode s | 0.300 | 0.100 | 3.00 |", "| a | total s | 1.000 | 2.000 | 0.50 |"]


def test_missing_fixture_is_one_line_error(bench, monkeypatch, tmp_path, official):
    monkeypatch.setattr(bench, "FIXTURE", tmp_path / "official-tiny")
    with pytest.raises(SystemExit) as e:
        bench.main(["--rows", "train", "--repeats", "1"])
    msg = str(e.value.code)
    assert msg.startswith("error: official-tiny fixture incomplete or missing") and "\n" not in msg
