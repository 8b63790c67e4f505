"""Token ids equal to Hugging Face's T5 tokenizer (transformers 5) on the same spiece.model."""
import random
import warnings

import numpy as np
import pytest

from infinity_jax.text.sentencepiece import MAX_LENGTH, T5Tokenizer, pad_ids

TRICKY = [
    "a photo of the cat sitting on a red chair",
    "",
    " ",
    "   \t\n  ",
    "  leading and trailing spaces   ",
    "multiple    spaces\tand\ttabs\nand\n\nnewlines\r\nend",
    "Café naïve résumé élève forêt, crème brûlée!",
    "cafe\u0301 composed vs decomposed caf\u00e9",  # NFKC composes the combining accent
    "東京の夜景、富士山と桜。中国长城熊猫",
    "emoji 😀🐱🐱 and flags 🇯🇵 and family 👩\u200d👩\u200d👧",
    "ＦＵＬＬＷＩＤＴＨ ｶﾞ ﬁ ① ㍱́ Ⅻ",  # compatibility characters, a halfwidth pair, ligature
    "a</s>b <pad> <unk> <extra_id_0> <extra_id_99> <extra_id_100>",  # added tokens cut out
    "zero\u200bwidth\ufeffbom \u00a0nbsp \u3000ideographic \u0085nel \u2028ls",
    "digits 1234567890 2024 and punctuation ... ?! ;-) \"quotes\" 'single'",
    "unknown ʘ ӂ ᚠ ꙮ characters",
    "▁literal▁meta ▁▁symbols",
]


@pytest.fixture(scope="module")
def hf_tok(tok_folder):
    from transformers import T5Tokenizer as HFT5Tokenizer

    return HFT5Tokenizer.from_pretrained(tok_folder)


@pytest.fixture(scope="module")
def ours(tok_folder):
    return T5Tokenizer.from_folder(tok_folder)


def test_tricky_prompts_match_hf(hf_tok, ours):
    for text in TRICKY:
        assert ours.encode(text) == hf_tok(text)["input_ids"], repr(text)


def test_auto_tokenizer_and_fast_alias_match(tok_folder, ours):
    from transformers import AutoTokenizer, T5TokenizerFast

    for cls in (AutoTokenizer, T5TokenizerFast):
        hf = cls.from_pretrained(tok_folder, legacy=True)  # Infinity passes legacy=True
        for text in TRICKY:
            assert ours.encode(text) == hf(text)["input_ids"], (cls.__name__, repr(text))


def test_empty_and_whitespace_are_just_eos(ours):
    for text in ("", " ", "\n\t "):
        assert ours.encode(text) == [1]
    tb = ours(["", "a cat"])
    assert tb.lens[0] == 1 and tb.ids[0, 0] == 1 and not tb.mask[0, 1:].any()


def test_long_prompt_truncated_like_hf(hf_tok, ours, corpus):
    text = " ".join(corpus[:200])
    assert len(ours.encode_pieces(text)) > MAX_LENGTH
    ref = hf_tok(text, max_length=MAX_LENGTH, truncation=True)["input_ids"]
    assert len(ref) == MAX_LENGTH and ref[-1] == 1
    assert ours.encode(text) == ref
    with pytest.warns(UserWarning, match="truncated"):
        tb = ours([text, "a cat"])
    assert tb.ids.shape == (2, MAX_LENGTH) and tb.lens.tolist()[0] == MAX_LENGTH
    assert ours.encode(text, max_length=None) == hf_tok(text)["input_ids"]


def test_batch_padding_matches_hf(hf_tok, ours):
    prompts = TRICKY[:6]
    ref = hf_tok(prompts, padding="max_length", max_length=48, truncation=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tb = ours(prompts, length=48)
    np.testing.assert_array_equal(tb.ids, np.asarray(ref["input_ids"]))
    np.testing.assert_array_equal(tb.mask, np.asarray(ref["attention_mask"], bool))
    np.testing.assert_array_equal(tb.lens, np.asarray(ref["attention_mask"]).sum(1))
    assert tb.ids.dtype == np.int32 and tb.lens.dtype == np.int32

    longest = ours(prompts)
    assert longest.ids.shape[1] == longest.lens.max()
    bucketed = ours(prompts, multiple=16)
    assert bucketed.ids.shape[1] % 16 == 0 and bucketed.ids.shape[1] - 16 < longest.lens.max()
    np.testing.assert_array_equal(bucketed.ids[:, :longest.ids.shape[1]], longest.ids)
    with pytest.raises(ValueError):
        pad_ids([[5, 6, 1]], length=2)


def test_random_strings_match_hf(hf_tok, ours, corpus):
    """Fuzz: caption words mixed with whitespace, marks, compatibility and unknown characters."""
    rng = random.Random(0)
    extra = (list(" \t\n\u3000\u00a0\u0085\u0301\u0308\u3099\uff9e\u200d\ufe0f\u200b")
             + ["</s>", "<unk>", "<extra_id_7>", "▁", "😀", "ﬁ", "①", "ｶ", "가", "\u1100\u1161", "\x00", "\x1f"])
    words = " ".join(corpus[:50]).split()
    texts = []
    for _ in range(400):
        parts = [rng.choice(extra) if rng.random() < 0.35 else " " + rng.choice(words)
                 for _ in range(rng.randint(0, 25))]
        texts.append("".join(parts))
    for _ in range(300):  # arbitrary code points
        cps = [rng.choice([rng.randint(0x20, 0x2FF), rng.randint(0x300, 0x36F), rng.randint(0x2000, 0x33FF),
                           rng.randint(0x4E00, 0x9FFF), rng.randint(0xAC00, 0xD7A3), rng.randint(0xFB00, 0xFFEF),
                           rng.randint(0x1F300, 0x1FAFF)]) for _ in range(rng.randint(1, 15))]
        texts.append("".join(map(chr, cps)))
    ref = hf_tok(texts)["input_ids"]
    bad = [(t, r, ours.encode(t, max_length=None)) for t, r in zip(texts, ref) if ours.encode(t, max_length=None) != r]
    assert not bad, bad[:3]


def test_special_ids_and_decode(ours, hf_tok):
    assert (ours.pad_id, ours.eos_id, ours.unk_id) == (0, 1, 2)
    assert ours.vocab_size == len(hf_tok)
    assert ours.encode("<extra_id_0>")[0] == hf_tok.convert_tokens_to_ids("<extra_id_0>") == ours.vocab_size - 1
    assert ours.decode(ours.encode("a photo of the cat")) == "a photo of the cat"
