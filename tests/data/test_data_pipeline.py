"""The Grain pipeline: aspect-ratio bucketing, per-host sharding, shuffling, resumable state, skipping."""
import numpy as np
import pytest

from infinity_jax.data.bucketing import BatchPlan, EmptyDatasetError, assign_buckets, make_buckets
from infinity_jax.data.pipeline import DataPipeline
from infinity_jax.data.synthetic import SyntheticSource
from infinity_jax.schedules import ScheduleError

SIZES = ((64, 64), (96, 48), (48, 96))  # h/w 1.0, 2.0, 0.5


def _text(caption, example, field):
    return np.full((len(caption.split()) + 1, 4), float(len(caption)), np.float32)


def _pipe(src, **kw):
    kw.setdefault("global_batch", 4)
    return DataPipeline(src, make_buckets("0.06M", templates=[1.0, 2.0, 0.5]), text_fn=_text, text_len=12,
                        num_threads=2, prefetch=2, **kw)


def test_data_buckets_follow_the_official_templates():
    b = make_buckets("0.06M", templates=[1.0, 0.5])
    assert b[0].pixel == (256, 256) and b[0].seq_len == 521 and len(b[0].scales) == 7
    assert b[1].h_div_w == 0.5 and b[1].pixel == (176, 352)
    custom = make_buckets(schedule=((1, 1), (2, 2), (4, 4)))
    assert custom[0].scales == ((1, 1, 1), (1, 2, 2), (1, 4, 4)) and custom[0].pixel == (64, 64)
    assert len(make_buckets("1M")) == 15
    ids = assign_buckets(np.array([1.0, 1.9, 0.45, 1.2, np.nan]), make_buckets("0.06M", [1.0, 2.0, 0.5]))
    np.testing.assert_array_equal(ids, [0, 1, 2, 0, 0])
    with pytest.raises(ScheduleError):
        make_buckets("0.06M", templates=[1.1])


def test_data_batches_are_single_template_and_cover_the_epoch():
    src = SyntheticSource(60, sizes=SIZES)
    pipe = _pipe(src)
    assert pipe.template_counts() == {1.0: 20, 2.0: 20, 0.5: 20}
    assert pipe.batches_per_epoch == 15
    seen, templates = [], []
    for _ in range(15):
        b = next(pipe)
        bucket = pipe.buckets[b["bucket"]]
        assert b["image"].shape == (4,) + bucket.pixel + (3,) and b["image"].dtype == np.uint8
        assert {SIZES[i % 3][0] / SIZES[i % 3][1] for i in b["index"]} == {bucket.h_div_w}
        assert b["text"].shape == (4, 12, 4) and b["text_mask"].dtype == bool
        n = b["text_mask"].sum(1)
        for j, cap in enumerate(b["caption"]):
            assert n[j] == min(len(cap.split()) + 1, 12) and b["text"][j, 0, 0] == len(cap)
        seen += list(b["index"])
        templates.append(b["bucket"])
    assert sorted(seen) == list(range(60))  # one epoch: every record once
    assert len(set(templates)) == 3 and templates != sorted(templates)  # templates interleaved
    second = [next(pipe)["index"].tolist() for _ in range(15)]
    assert sorted(sum(second, [])) == list(range(60))
    assert second[0] != seen[:4]  # reshuffled per epoch


def test_data_state_restores_the_exact_stream():
    src = SyntheticSource(40, sizes=SIZES[:2])
    a = _pipe(src, seed=3)
    for _ in range(5):
        next(a)
    state = a.get_state()
    want = [next(a) for _ in range(6)]  # crosses the epoch boundary (10 batches per epoch)
    b = _pipe(src, seed=3)
    b.set_state(state)
    for x in want:
        y = next(b)
        assert x["batch"] == y["batch"] and np.array_equal(x["index"], y["index"])
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["text"], y["text"])
    other = _pipe(src, seed=4)
    assert next(other)["index"].tolist() != next(_pipe(src, seed=3))["index"].tolist()


def test_data_hosts_load_disjoint_halves_of_the_global_batch():
    src = SyntheticSource(48, sizes=SIZES)
    full = _pipe(src, global_batch=8, short_caption_prob=0.5)
    hosts = [_pipe(src, global_batch=8, process_index=p, process_count=2, short_caption_prob=0.5) for p in (0, 1)]
    for _ in range(6):
        f, h0, h1 = next(full), next(hosts[0]), next(hosts[1])
        assert f["bucket"] == h0["bucket"] == h1["bucket"]
        assert len(h0["index"]) == len(h1["index"]) == 4
        assert f["index"].tolist() == h0["index"].tolist() + h1["index"].tolist()
        assert f["caption"].tolist() == h0["caption"].tolist() + h1["caption"].tolist()
        assert np.array_equal(f["image"], np.concatenate([h0["image"], h1["image"]]))
    with pytest.raises(ValueError, match="not divisible"):
        _pipe(src, global_batch=6, process_count=4)


def test_data_corrupt_records_are_replaced_counted_and_never_fatal():
    bad = {1, 4, 7, 9}
    src = SyntheticSource(24, sizes=((64, 64),), corrupt=bad)
    pipe = DataPipeline(src, make_buckets(schedule=((1, 1), (2, 2), (4, 4))), global_batch=4, shuffle=False)
    batches = [next(pipe) for _ in range(6)]
    assert sum(b["skipped"] for b in batches) == len(bad)
    used = [int(i) for b in batches for i in b["index"]]
    assert not set(used) & bad and all(b["image"].shape == (4, 64, 64, 3) for b in batches)
    # the replacement is the next readable record of the same template
    assert batches[0]["index"].tolist() == [0, 2, 2, 3]
    # a bad record met again is counted again, not decoded again
    pipe2 = DataPipeline(src, make_buckets(schedule=((1, 1), (2, 2), (4, 4))), global_batch=4, shuffle=False)
    pipe2.loader.bad.update(bad)
    assert next(pipe2)["skipped"] == 1


def test_data_short_captions_and_empty_datasets():
    src = SyntheticSource(16, sizes=((64, 64),))
    pipe = _pipe(src, short_caption_prob=1.0)
    caps = next(pipe)["caption"]
    assert all(len(c.split()) == 2 for c in caps)  # the short 'text' field ("red square")
    with pytest.raises(EmptyDatasetError, match="cannot fill one global batch"):
        _pipe(SyntheticSource(3, sizes=((64, 64),)), global_batch=4)
    with pytest.raises(EmptyDatasetError):
        BatchPlan(np.zeros(0, np.int32), 1, 4)


def test_data_single_template_needs_no_per_record_metadata():
    """One template: the plan is a lazy permutation (works for endless procedural sources)."""
    src = SyntheticSource(30, sizes=((64, 64),))
    pipe = DataPipeline(src, make_buckets(schedule=((1, 1), (2, 2), (4, 4))), global_batch=4, num_threads=1)
    assert pipe.plan.uniform and pipe.batches_per_epoch == 7
    epoch = [next(pipe)["index"].tolist() for _ in range(7)]
    flat = sum(epoch, [])
    assert len(set(flat)) == 28 and flat != sorted(flat)
    assert sum([next(pipe)["index"].tolist() for _ in range(7)], []) != flat  # reshuffled

    class Endless:
        def __len__(self):
            return 2 ** 31 - 1

        def __getitem__(self, i):
            return SyntheticSource(1, seed=int(i))[0]

    pipe = DataPipeline(Endless(), make_buckets(schedule=((1, 1), (2, 2))), global_batch=2, num_threads=1)
    b = next(pipe)
    assert b["image"].shape == (2, 32, 32, 3) and all(0 <= i < 2 ** 31 - 1 for i in b["index"])


def test_data_factory_source_shapes():
    """The demo's procedural ``shapes`` source plugs in through ``config.data.factory``."""
    pytest.importorskip("infinity_jax.data.shapes")
    import ml_collections

    from infinity_jax.data.sources import build_source

    c = ml_collections.ConfigDict({"data": {"source": "factory", "factory": "infinity_jax.data.shapes:ShapesSource",
                                            "factory_kwargs": {"size": 64}}})
    src = build_source(c)
    pipe = DataPipeline(src, make_buckets(schedule=((1, 1), (2, 2), (4, 4))), global_batch=2, num_threads=1,
                        text_fn=_text, text_len=16)
    b = next(pipe)
    assert b["image"].shape == (2, 64, 64, 3) and all(isinstance(c, str) and c for c in b["caption"])
