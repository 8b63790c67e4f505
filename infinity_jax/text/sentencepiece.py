"""T5 tokenisation from a SentencePiece ``spiece.model``, id-for-id equal to Hugging Face.

The target is what ``T5Tokenizer.from_pretrained(folder)`` / ``AutoTokenizer.from_pretrained(folder)``
(transformers 5, a Rust ``tokenizers`` Unigram backend built from the ``.model`` file) returns
for a folder holding ``spiece.model``, called as Infinity does::

    tokenizer(prompts, max_length=512, padding=..., truncation=True)

That pipeline, reproduced step by step here (needs ``sentencepiece``, ``protobuf`` and, for exact
grapheme clusters, ``regex``; without ``regex`` an approximation is used):

1. *Added tokens* are cut out of the raw text first (leftmost-longest match, no stripping of
   the spaces around them): the control pieces (``<pad>``, ``</s>``), user-defined pieces,
   ``<unk>`` and the sentinels ``<extra_id_0..99>``, which get ids ``len(spm) + 99 - i``.
2. Every other chunk is normalised with the model's precompiled character map only
   (``nmt_nfkc`` for T5: NFKC plus a few NMT rules; no whitespace folding at this step),
   grapheme cluster by grapheme cluster as the Rust normaliser does (see :class:`CharsMap`).
3. It is split on Unicode whitespace (Rust ``char::is_whitespace``: this includes U+0085,
   U+1680, U+2028/2029, which SentencePiece itself would not treat as spaces), so runs of spaces,
   tabs, newlines, leading and trailing whitespace all disappear.
4. Each word gets a ``▁`` prefix (also right after an added token: "legacy" behaviour; the
   ``legacy`` flag of transformers 4 no longer changes anything for T5 in transformers 5) and is
   split before every ``▁``.
5. Each piece is segmented by Unigram Viterbi over the whole vocabulary (sentinels and control
   pieces included, as Hugging Face does), the unknown score being ``min(score) - 10``;
   consecutive unknown characters fuse into one ``<unk>``.
6. ``</s>`` (id 1) is appended; with truncation the first ``max_length - 1`` pieces are kept.

An empty or whitespace-only prompt is therefore just ``[1]``.

For ordinary text this equals plain ``SentencePieceProcessor.encode(text) + [1]``; they differ only
on added-token strings in the text, exotic whitespace (U+0085, ...) and a few grapheme clusters
(e.g. a compatibility character followed by a combining mark, or halfwidth kana + voiced mark),
where transformers 4's slow ``T5Tokenizer`` would follow SentencePiece instead.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
import unicodedata
import warnings
from typing import Sequence

import numpy as np

#: Infinity's (and T5's) maximum prompt length in tokens, EOS included.
MAX_LENGTH = 512

# Rust char::is_whitespace (the Unicode White_Space property), which Hugging Face splits on.
_WHITESPACE = re.compile("[\t\n\u000b\u000c\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
_META = "\u2581"  # ▁
_UNK_PENALTY = 10.0
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4


@dataclasses.dataclass
class TokenBatch:
    """A padded batch of prompts.

    Attributes:
      ids: ``(B, L)`` int32 token ids, padded with 0.
      mask: ``(B, L)`` bool, True on real tokens (EOS included).
      lens: ``(B,)`` int32, ``mask.sum(1)``.
    """

    ids: np.ndarray
    mask: np.ndarray
    lens: np.ndarray


def _model_bytes(model: str | os.PathLike | bytes) -> bytes:
    if isinstance(model, bytes):
        return model
    path = pathlib.Path(model)
    if path.is_dir():
        path = path / "spiece.model"
    if not path.is_file():
        raise FileNotFoundError(f"SentencePiece model {path} not found")
    return path.read_bytes()


def pad_ids(seqs: Sequence[Sequence[int]], *, length: int | None = None, multiple: int | None = None,
            pad_id: int = 0) -> TokenBatch:
    """Pad id lists to ``length`` (exactly) or to the longest rounded up to ``multiple``."""
    longest = max((len(s) for s in seqs), default=1)
    if length is None:
        length = max(longest, 1)
        if multiple:
            length = int(math.ceil(length / multiple) * multiple)
    elif longest > length:
        raise ValueError(f"a sequence of {longest} tokens does not fit length {length}")
    ids = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = True
    return TokenBatch(ids, mask, mask.sum(1).astype(np.int32))


def _split_graphemes_fallback(text: str) -> list[str]:
    """Approximate extended grapheme clusters: a character plus following marks / joiners."""
    out: list[str] = []
    for ch in text:
        if out and (unicodedata.category(ch) in ("Mn", "Mc", "Me") or ch in "\u200d\ufe0f\ufe0e"
                    or out[-1].endswith("\u200d")) and out[-1] not in ("\r", "\n"):
            out[-1] += ch
        elif out and out[-1] == "\r" and ch == "\n":
            out[-1] += ch
        else:
            out.append(ch)
    return out


try:
    import regex as _regex  # UAX #29 extended grapheme clusters, as the Rust normalizer uses

    _GRAPHEME = _regex.compile(r"\X")

    def split_graphemes(text: str) -> list[str]:
        """Extended grapheme clusters of ``text`` (Unicode UAX #29)."""
        return _GRAPHEME.findall(text)
except ImportError:  # pragma: no cover - regex comes with transformers; without it, an approximation
    split_graphemes = _split_graphemes_fallback


class CharsMap:
    """SentencePiece's precompiled character map, applied the way Hugging Face ``tokenizers`` does.

    The blob is ``<uint32 trie size><darts double-array trie><NUL-separated replacements>``. Like the
    Rust ``Precompiled`` normalizer, text is walked by grapheme cluster: a cluster shorter than 6
    UTF-8 bytes is looked up whole and, on a hit, replaced by the *shortest* matching key's
    replacement (any rest of the cluster is dropped); otherwise each character is looked up alone.
    SentencePiece itself would use the longest match over the string instead (differences only
    arise for rare clusters such as a compatibility character followed by a combining mark).
    """

    def __init__(self, blob: bytes):
        size = int.from_bytes(blob[:4], "little")
        self._units = np.frombuffer(blob[4:4 + size], dtype="<u4").astype(np.int64).tolist()
        self._strings = blob[4 + size:]
        self._char_cache: dict[str, str] = {}

    def _lookup(self, key: bytes) -> str | None:
        """Replacement of the shortest trie key that prefixes ``key``, or None."""
        units = self._units
        pos = units[0] >> 10 << ((units[0] & (1 << 9)) >> 6)
        for c in key:
            if c == 0:
                break
            pos ^= c
            unit = units[pos]
            if unit & ((1 << 31) | 0xFF) != c:
                return None
            pos ^= unit >> 10 << ((unit & (1 << 9)) >> 6)
            if (unit >> 8) & 1:
                start = units[pos] & ((1 << 31) - 1)
                end = self._strings.index(b"\0", start)
                return self._strings[start:end].decode("utf-8")
        return None

    def _char(self, ch: str) -> str:
        out = self._char_cache.get(ch)
        if out is None:
            found = self._lookup(ch.encode("utf-8"))
            out = self._char_cache[ch] = ch if found is None else found
        return out

    def __call__(self, text: str) -> str:
        """Normalised ``text``."""
        if text.isascii() and text.isprintable():
            return "".join(self._char(c) for c in text)
        out = []
        for g in split_graphemes(text):
            if len(g) == 1:
                out.append(self._char(g))
                continue
            if len(g.encode("utf-8")) < 6:
                found = self._lookup(g.encode("utf-8"))
                if found is not None:
                    out.append(found)
                    continue
            out.extend(self._char(c) for c in g)
        return "".join(out)


class T5Tokenizer:
    """Hugging Face-exact T5 tokenizer over a ``spiece.model`` (see the module docstring).

    Args:
      model: path of ``spiece.model`` (or of its folder), or the serialized model bytes.
      extra_ids: number of ``<extra_id_N>`` sentinels appended to the vocabulary (T5: 100).
      max_length: truncation length, EOS included (Infinity: 512).
    """

    def __init__(self, model: str | os.PathLike | bytes, *, extra_ids: int = 100, max_length: int = MAX_LENGTH):
        import sentencepiece as spm  # noqa: PLC0415
        from sentencepiece import sentencepiece_model_pb2  # noqa: PLC0415

        self.model_bytes = _model_bytes(model)
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self.model_bytes)
        if proto.trainer_spec.model_type not in (0, 1):  # 0 = unset (unigram)
            raise ValueError("only Unigram SentencePiece models are supported (T5's spiece.model is one)")
        self.max_length = max_length
        self.extra_ids = extra_ids
        spec = proto.trainer_spec
        self.unk_id, self.eos_id, self.pad_id = spec.unk_id, spec.eos_id, spec.pad_id
        if self.eos_id < 0 or self.pad_id < 0:
            raise ValueError("a T5 spiece.model needs eos and pad pieces (train with pad_id=0, eos_id=1, unk_id=2)")
        self.num_pieces = len(proto.pieces)

        vocab = [(p.piece, float(p.score)) for p in proto.pieces]
        vocab += [(f"<extra_id_{i}>", 0.0) for i in range(extra_ids - 1, -1, -1)]
        self.pieces = [p for p, _ in vocab]
        self._scores = [s for _, s in vocab]
        self._ids = {}
        for i, (piece, _) in enumerate(vocab):
            self._ids[piece] = i  # like Hugging Face, a repeated piece maps to its last id
        self._unk_score = min(self._scores) - _UNK_PENALTY
        self._max_piece = max(len(p) for p in self.pieces)

        added = [p.piece for p in proto.pieces if p.type in (_CONTROL, _USER_DEFINED)]
        added.append(proto.pieces[self.unk_id].piece)
        added += [f"<extra_id_{i}>" for i in range(extra_ids)]
        self.added_tokens = sorted(set(added), key=lambda t: (-len(t), t))
        self._added = re.compile("|".join(re.escape(t) for t in self.added_tokens)) if self.added_tokens else None

        charsmap = proto.normalizer_spec.precompiled_charsmap
        self._normalizer = CharsMap(charsmap) if charsmap else None
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)  # for decode
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, **kw) -> "T5Tokenizer":
        """From a Hugging Face folder holding ``spiece.model``."""
        path = pathlib.Path(folder) / "spiece.model"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no spiece.model")
        return cls(path, **kw)

    @property
    def vocab_size(self) -> int:
        """Pieces plus sentinels (32100 for T5; the embedding has more rows, 32128)."""
        return len(self.pieces)

    # ----------------------------------------------------------------- segmentation
    def _viterbi(self, text: str) -> tuple[int, ...]:
        """Best Unigram segmentation of one ``▁``-prefixed chunk; unknown runs fuse into one unk."""
        n = len(text)
        score = [0.0] * (n + 1)
        start = [-1] * (n + 1)
        node = [0] * (n + 1)
        ids, scores, unk = self._ids, self._scores, self.unk_id
        for s in range(n):
            base = score[s]
            single = False
            for e in range(s + 1, min(n, s + self._max_piece) + 1):
                tid = ids.get(text[s:e])
                if tid is None:
                    continue
                cand = base + scores[tid]
                if start[e] < 0 or cand > score[e]:
                    score[e], start[e], node[e] = cand, s, tid
                single = single or e == s + 1
            if not single:
                cand = base + self._unk_score
                if start[s + 1] < 0 or cand > score[s + 1]:
                    score[s + 1], start[s + 1], node[s + 1] = cand, s, unk
        out: list[int] = []
        e, run_end = n, -1
        while e > 0:
            s = start[e]
            if node[e] == unk:
                run_end = e if run_end < 0 else run_end
            else:
                if run_end >= 0:
                    out.append(ids.get(text[e:run_end], unk))
                    run_end = -1
                out.append(node[e])
            e = s
        if run_end >= 0:
            out.append(ids.get(text[0:run_end], unk))
        return tuple(reversed(out))

    def _encode_chunk(self, chunk: str) -> list[int]:
        if self._normalizer is not None:
            chunk = self._normalizer(chunk)
        out: list[int] = []
        for word in _WHITESPACE.split(chunk):
            if not word:
                continue
            if not word.startswith(_META):
                word = _META + word
            for piece in re.findall(f"{_META}[^{_META}]*", word):
                ids = self._cache.get(piece)
                if ids is None:
                    if len(self._cache) > 500_000:
                        self._cache.clear()
                    ids = self._cache[piece] = self._viterbi(piece)
                out.extend(ids)
        return out

    def encode_pieces(self, text: str) -> list[int]:
        """Ids of ``text`` without EOS and without truncation."""
        if self._added is None:
            return self._encode_chunk(text)
        out: list[int] = []
        pos = 0
        for m in self._added.finditer(text):
            out.extend(self._encode_chunk(text[pos:m.start()]))
            out.append(self._ids[m.group()])
            pos = m.end()
        out.extend(self._encode_chunk(text[pos:]))
        return out

    def encode(self, text: str, max_length: int | None = -1) -> list[int]:
        """Ids of ``text`` with EOS appended, truncated to ``max_length`` (default: the tokenizer's; None: off)."""
        max_length = self.max_length if max_length == -1 else max_length
        ids = self.encode_pieces(text)
        if max_length is not None and len(ids) + 1 > max_length:
            ids = ids[:max(max_length - 1, 0)]
        return ids + [self.eos_id]

    def __call__(self, prompts: str | Sequence[str], *, length: int | None = None, multiple: int | None = None,
                 max_length: int | None = -1) -> TokenBatch:
        """Tokenise and pad a batch.

        Args:
          prompts: a string or a sequence of B strings.
          length: pad (and truncate) every row to exactly this many tokens.
          multiple: otherwise pad to the longest row rounded up to a multiple of this.
          max_length: truncation length, EOS included (default: the tokenizer's, 512; None: off).
            A warning names how many prompts were cut.

        Returns:
          :class:`TokenBatch` with ids ``(B, L)``, mask ``(B, L)``, lens ``(B,)``.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        max_length = self.max_length if max_length == -1 else max_length
        if length is not None:
            max_length = length if max_length is None else min(max_length, length)
        seqs = []
        cut = 0
        for p in prompts:
            ids = self.encode_pieces(p)
            if max_length is not None and len(ids) + 1 > max_length:
                cut += 1
                ids = ids[:max(max_length - 1, 0)]
            seqs.append(ids + [self.eos_id])
        if cut:
            warnings.warn(f"{cut} of {len(seqs)} prompt(s) exceeded {max_length} tokens and were truncated",
                          stacklevel=2)
        return pad_ids(seqs, length=length, multiple=multiple, pad_id=self.pad_id)

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids`` (sentinels and specials dropped when ``skip_special``)."""
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i < self.num_pieces and i not in (self.pad_id, self.eos_id)]
        else:
            ids = [i for i in ids if i < self.num_pieces]
        return self._sp.decode(ids)


def load(folder: str | os.PathLike, **kw) -> T5Tokenizer:
    """The tokenizer of a Hugging Face T5 folder (``spiece.model``)."""
    return T5Tokenizer.from_folder(folder, **kw)
