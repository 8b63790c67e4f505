"""Precomputed caption features: resumable ArrayRecord parts, read back equal to direct encoding."""
import json
import subprocess
import sys

import numpy as np
import pytest

from infinity_jax.data.text_features import feature_dir, open_features, precompute, precompute_file
from infinity_jax.text import TextEncoder
from infinity_jax.tools.train_sentencepiece import build_tiny_t5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, corpus):
    return build_tiny_t5(tmp_path_factory.mktemp("tiny"), corpus[:800], vocab_size=300, seed=1)


@pytest.fixture(scope="module")
def encoder(tiny):
    return TextEncoder.load(tiny, bucket=32, batch_multiple=4)


def _write_jsonl(path, corpus, n=23):
    rows = []
    for i in range(n):
        row = {"image_path": f"images/{i:05d}.jpg", "h_div_w": 1.0, "long_caption": corpus[i]}
        if i % 3 == 0:
            row["text"] = corpus[1000 + i][:20]
        rows.append(row)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(5, "")  # a blank line is skipped (and counted as done)
    path.write_text("\n".join(lines) + "\n")
    return rows


def test_prefix_then_resume_and_read_back(tmp_path, corpus, encoder):
    jsonl = tmp_path / "split.jsonl"
    _write_jsonl(jsonl, corpus)
    first = precompute_file(jsonl, encoder, batch_size=4, part_lines=5, dtype="float32", max_lines=12,
                            progress=False)
    assert first["lines"] == 12 and first["skipped"] == 0
    with open_features(jsonl) as r:
        assert r.lines_done == set(range(12))
    # an interruption leaves a part that progress.jsonl does not list: it must be discarded
    (feature_dir(jsonl) / "part-00099.array_record").write_bytes(b"partial")
    second = precompute_file(jsonl, encoder, batch_size=4, part_lines=5, dtype="float32", progress=False)
    assert second["skipped"] == 12 and second["lines"] == 24 - 12
    assert not (feature_dir(jsonl) / "part-00099.array_record").exists()
    third = precompute_file(jsonl, encoder, dtype="float32", progress=False)
    assert third["lines"] == 0 and third["records"] == 0

    lines = jsonl.read_text().splitlines()
    with open_features(jsonl) as reader:
        assert reader.lines_done == set(range(24))
        expected = {(i, k) for i, raw in enumerate(lines) if raw for k in ("long_caption", "text")
                    if k in json.loads(raw)}
        assert set(reader.keys()) == expected
        keys = sorted(expected)
        captions = [json.loads(lines[i])[k] for i, k in keys]
        feats, _, lens = encoder.encode(captions)
        for (i, k), cap, f, n in zip(keys, captions, np.asarray(feats), np.asarray(lens)):
            header, stored = reader.record(i, k)
            assert stored.shape == (n, encoder.dim) and stored.dtype == np.float32
            assert header["line"] == i and header["field"] == k
            np.testing.assert_allclose(stored, f[:n], atol=1e-5)


def test_bf16_storage_and_settings_guard(tmp_path, corpus, encoder):
    jsonl = tmp_path / "data" / "a.jsonl"
    jsonl.parent.mkdir()
    _write_jsonl(jsonl, corpus, n=6)
    stats = precompute(tmp_path / "data", encoder, fields=("long_caption",), progress=False)
    assert stats[str(jsonl)]["records"] == 6
    with open_features(feature_dir(jsonl)) as r:
        got = r.get(0, "long_caption")
        assert got.dtype.name == "bfloat16"
        ref, _, n = encoder.encode([corpus[0]])
        np.testing.assert_allclose(got.astype(np.float32), np.asarray(ref)[0, :int(n[0])], rtol=1e-2, atol=1e-2)
        with pytest.raises(KeyError):
            r.get(0, "text")
    with pytest.raises(ValueError, match="other settings"):
        precompute_file(jsonl, encoder, fields=("long_caption",), dtype="float32", progress=False)
    again = precompute_file(jsonl, encoder, fields=("long_caption",), dtype="float32", overwrite=True,
                            progress=False)
    assert again["records"] == 6


def test_cli_runs(tmp_path, corpus, tiny):
    jsonl = tmp_path / "cli.jsonl"
    _write_jsonl(jsonl, corpus, n=4)
    res = subprocess.run([sys.executable, "-m", "infinity_jax.tools.precompute_text", f"--data={tmp_path}",
                          f"--t5={tiny}", "--compute_dtype=float32", "--batch_size=2"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "5 lines / 6 captions encoded" in res.stdout  # 4 rows + 1 blank line
    with open_features(jsonl) as r:
        assert len(r) == 6
