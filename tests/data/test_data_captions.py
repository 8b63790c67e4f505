"""Caption policy (official ``get_text_input`` / ``process_short_text``) and what is retired for good."""
import numpy as np

from infinity_jax.data.bucketing import make_buckets
from infinity_jax.data.captions import choose_caption, process_short_text, stored_caption
from infinity_jax.data.pipeline import DataPipeline
from infinity_jax.data.synthetic import SyntheticSource
from infinity_jax.training.text_features import PrecomputedText

SCHED = ((1, 1), (2, 2), (4, 4))
C = 4


class LongOnly:
    """Records with a long caption and its precomputed features, no short caption; ``no_text``:
    records without features; ``bad_image``: records whose image cannot be decoded."""

    def __init__(self, n, no_text=(), bad_image=()):
        self.src, self.n = SyntheticSource(n, sizes=((64, 64),)), n
        self.no_text, self.bad_image = set(no_text), set(bad_image)
        self.reads = np.zeros(n, int)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads[i] += 1
        ex = dict(self.src[i])
        ex.pop("text")
        if i in self.bad_image:
            ex["image"] = b"not an image"
        if i not in self.no_text:
            ex["t5"] = np.full((3, C), float(i), np.float32)
        return ex


def _pipe(src, **kw):
    return DataPipeline(src, make_buckets(schedule=SCHED), global_batch=4, num_threads=1, prefetch=1,
                        text_fn=PrecomputedText(C), text_len=8, **kw)


def test_precomputed_records_without_short_caption_train_on_the_long_one():
    src = LongOnly(64)
    pipe = _pipe(src, short_caption_prob=0.5)
    batches = [next(pipe) for _ in range(40)]  # 2.5 epochs
    assert sum(b["skipped"] for b in batches) == 0 and not pipe.loader.bad
    for b in batches:
        np.testing.assert_array_equal(b["text"][:, 0, 0], b["index"].astype(np.float32))


def test_short_caption_features_missing_fall_back_to_the_long_caption():
    src = SyntheticSource(16, sizes=((64, 64),))

    class WithLongFeatures:
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return dict(src[i], t5=np.full((2, C), float(i), np.float32))  # 'text' kept, no 't5_text'

    pipe = _pipe(WithLongFeatures(), short_caption_prob=1.0)
    b = next(pipe)
    assert b["skipped"] == 0 and not pipe.loader.bad
    np.testing.assert_array_equal(b["text"][:, 0, 0], b["index"].astype(np.float32))


def test_only_image_decode_errors_retire_a_record():
    src = LongOnly(16, no_text={1, 2}, bad_image={5})
    pipe = DataPipeline(src, make_buckets(schedule=SCHED), global_batch=4, shuffle=False, num_threads=1,
                        prefetch=1, text_fn=PrecomputedText(C), text_len=8)
    for _ in range(8):  # two epochs
        b = next(pipe)
        assert not {1, 2, 5} & set(b["index"].tolist())
    assert pipe.loader.bad == {5}
    assert src.reads[5] == 1 and src.reads[1] >= 2  # a text error is tried again on the next visit


def test_process_short_text():
    assert process_short_text("a red cat -- by someone") == "a red cat "
    assert process_short_text("--only") == "--only"
    assert process_short_text("plain") == "plain"


def _draws(n, **kw):
    rng = np.random.default_rng(0)
    return [choose_caption(rng=rng, **kw).text for _ in range(n)]


def test_dynamic_length_truncates_long_captions_to_whole_sentences():
    long = "A red cat sits. It is on a mat. The mat is blue. The room is dark"
    out = _draws(2000, long=long, short=None, short_prob=0.2, dynamic_length=True, long_type="synthetic")
    parts = long.split(".")
    allowed = {".".join(parts[:k]) for k in range(1, 5)}
    counts = {k: out.count(".".join(parts[:k])) for k in range(1, 5)}
    assert set(out) <= allowed
    assert counts[1] == 0  # first sentence has < 15 words: the short fallback is 2 sentences
    assert abs(counts[2] / 2000 - 0.2) < 0.03  # the short fallback with short_prob
    for k in (3, 4):  # k ~ U{3, 4} otherwise
        assert abs(counts[k] / 2000 - 0.4) < 0.04


def test_dynamic_length_short_fallback_by_first_sentence_length():
    first = " ".join(["word"] * 15)
    long = first + ". Second. Third"
    out = _draws(500, long=long, short=None, short_prob=1.0, dynamic_length=True, long_type="synthetic")
    assert set(out) == {first}
    out = _draws(500, long=long, short="given short", short_prob=1.0, dynamic_length=True, long_type="x")
    assert set(out) == {"given short"}


def test_user_prompts_and_disabled_dynamic_length_keep_whole_captions():
    long = "A red cat sits. It is on a mat. The mat is blue"
    for kw in (dict(dynamic_length=False, long_type="synthetic"), dict(dynamic_length=True, long_type=None),
               dict(dynamic_length=True, long_type="user_prompt")):
        out = _draws(400, long=long, short=None, short_prob=0.5, **kw)
        assert set(out) == {long}, kw
        out = _draws(400, long=long, short="red cat", short_prob=0.5, **kw)
        assert set(out) == {long, "red cat"} and abs(out.count("red cat") / 400 - 0.5) < 0.08


def test_stored_caption_uses_only_existing_fields():
    rng = np.random.default_rng(0)
    assert {stored_caption("long", None, rng, short_prob=1.0).field for _ in range(50)} == {"long_caption"}
    got = [stored_caption("long", "short", rng, short_prob=0.5).field for _ in range(400)]
    assert abs(got.count("text") / 400 - 0.5) < 0.08
