"""The ArrayRecord writer (image folder + captions JSONL, the official format) and its source."""
import json

import numpy as np
import pytest
from data_helpers import make_image_folder

from infinity_jax.data.arrayrecord import ArrayRecordSource
from infinity_jax.data.records import CorruptRecord, decode_example, decode_image, encode_example
from infinity_jax.data.writer import write_shards


def test_data_record_roundtrip():
    ex = {"image": b"\x01\x02bytes", "long_caption": "a cat", "line": 3, "h_div_w": np.float32(0.5),
          "t5": np.arange(12, dtype=np.float32).reshape(3, 4), "extra": {"k": [1, 2]}}
    out = decode_example(encode_example(ex))
    assert out["image"] == ex["image"] and out["long_caption"] == "a cat" and out["line"] == 3
    assert out["h_div_w"] == 0.5 and out["extra"] == {"k": [1, 2]}
    np.testing.assert_array_equal(out["t5"], ex["t5"])
    with pytest.raises(CorruptRecord):
        decode_example(b"garbage")
    with pytest.raises(CorruptRecord):
        decode_example(encode_example(ex)[:-5])  # truncated payload
    with pytest.raises(CorruptRecord):
        decode_image(b"\x89PNG\r\n\x1a\n not an image")


def test_data_writer_verifies_and_indexes(tmp_path):
    raw = make_image_folder(tmp_path / "raw", 12, sizes=((64, 64), (96, 48), (48, 80)), corrupt=(2,),
                            missing=(5,), bad_json=(7,), no_caption=(9,))
    index = write_shards(raw / "captions.jsonl", raw, tmp_path / "shards", shard_size=3)
    assert index["num_records"] == 8 and index["num_skipped"] == 4
    why = " ".join(s["why"] for s in index["skipped"])
    assert "missing image" in why and "bad JSON" in why and "no caption" in why and "unreadable image" in why
    assert [s["num_records"] for s in index["shards"]] == [3, 3, 2]
    assert index["shards"][0]["file"] == "shard-00000-of-00003.array_record"
    on_disk = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert on_disk == index
    src = ArrayRecordSource(tmp_path / "shards")
    assert len(src) == 8
    kept = [0, 1, 3, 4, 6, 8, 10, 11]
    sizes = ((64, 64), (96, 48), (48, 80))
    np.testing.assert_allclose(src.aspect_ratios(), [sizes[i % 3][0] / sizes[i % 3][1] for i in kept], rtol=1e-6)
    for j, i in enumerate(kept):
        ex = src[j]
        assert ex["line"] == i and ex["image_path"] == f"images/{i:05d}.png"
        assert ex["long_caption"].endswith("A test image.") and isinstance(ex["text"], str)
        assert decode_image(ex["image"]).shape == sizes[i % 3] + (3,)
    with pytest.raises(FileExistsError):
        write_shards(raw / "captions.jsonl", raw, tmp_path / "shards")
    # without verification the corrupt image is written; the source returns it, decoding fails
    index = write_shards(raw / "captions.jsonl", raw, tmp_path / "shards", verify=False, overwrite=True)
    assert index["num_records"] == 9
    src = ArrayRecordSource(tmp_path / "shards")
    with pytest.raises(CorruptRecord):
        decode_image(src[2]["image"])


def test_data_writer_embeds_precomputed_t5_features(tmp_path):
    """``--t5_features``: the X.t5/ store of ``infinity_jax.data.text_features`` goes into the records, and
    the trainer's 'precomputed' text source reads it; the online encoder gives the same features."""
    from infinity_jax.data.text_features import precompute_file
    from infinity_jax.text import TextEncoder
    from infinity_jax.tools.train_sentencepiece import build_tiny_t5
    from infinity_jax.training.text_features import OnlineT5, PrecomputedText

    raw = make_image_folder(tmp_path / "raw", 6)
    captions = [json.loads(x)["long_caption"] for x in (raw / "captions.jsonl").read_text().splitlines()]
    t5 = build_tiny_t5(tmp_path / "t5", captions * 20, vocab_size=200)
    enc = TextEncoder.load(t5)
    precompute_file(raw / "captions.jsonl", enc, dtype="float32", progress=False)
    write_shards(raw / "captions.jsonl", raw, tmp_path / "shards", t5_features=True)
    src = ArrayRecordSource(tmp_path / "shards")
    text = PrecomputedText(enc.dim)
    online = OnlineT5(str(t5), max_len=64)
    for i in range(len(src)):
        ex = src[i]
        assert ex["t5"].shape[1] == enc.dim and "t5_text" in ex
        feats = text(ex["long_caption"], ex, "long_caption")
        want, mask = online([ex["long_caption"]])
        n = int(mask.sum())
        assert feats.shape == (n, enc.dim)
        np.testing.assert_allclose(feats, want[0, :n], atol=1e-5)
        np.testing.assert_array_equal(text(ex["text"], ex, "text"), ex["t5_text"])
    # a record without features is reported as corrupt (so the pipeline skips it)
    with pytest.raises(CorruptRecord):
        text("a caption", {"long_caption": "a caption"}, "long_caption")
    # the store beside the JSONL is read by line number when the records carry no features
    write_shards(raw / "captions.jsonl", raw, tmp_path / "plain", t5_features=False)
    plain = ArrayRecordSource(tmp_path / "plain")
    store = PrecomputedText(enc.dim, store=str(raw / "captions.jsonl"))
    ex = plain[3]
    assert "t5" not in ex
    np.testing.assert_array_equal(store(ex["long_caption"], ex, "long_caption"), src[3]["t5"])
