"""Which caption a training sample is conditioned on: the official caption policy.

Per sample, with ``u ~ U[0, 1)`` drawn first and ``p = short_prob``:

* ``dynamic_length`` on and the record's ``long_caption_type`` is not ``'user_prompt'`` (the
  official default when a record has no type): split the long caption at ``'.'`` into non-empty
  sentences; ``n = 1`` if the first sentence has at least 15 words, else 2. The short caption is
  the record's own, or the first ``n`` sentences. ``u < p``: the short caption; else the long one if
  it has at most ``n`` sentences; else its first ``k ~ U{n+1, ..., sentences}`` sentences.
* otherwise: the record's short caption when it exists and ``u < p``, else the long caption.

The result then goes through :func:`process_short_text` (text after ``'--'`` is dropped).

With precomputed text features only the two stored captions have features, so
:func:`stored_caption` applies: the short caption (``field='text'``) with probability ``p`` when the
record has one, else the long caption (``field='long_caption'``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: ``long_caption_type`` of records that do not say (the official default): no dynamic length.
USER_PROMPT = "user_prompt"
#: First-sentence word count from which the short fallback is one sentence instead of two.
LONG_FIRST_SENTENCE = 15


class Caption(NamedTuple):
    """The chosen caption and the record field it comes from (``long_caption`` or ``text``);
    ``field`` is ``None`` for a caption derived from the long one (truncated or first sentences)."""

    text: str
    field: str | None


def process_short_text(text: str) -> str:
    """Drop everything from the first ``'--'`` on, unless nothing would be left."""
    if "--" in text:
        head = text.split("--")[0]
        if head:
            return head
    return text


def sentences(text: str) -> list[str]:
    """The non-empty pieces of ``text`` between ``'.'`` (spaces kept, as the official split)."""
    return [s for s in text.split(".") if s]


def short_fallback_count(long_sentences: list[str]) -> int:
    """Sentences of the derived short caption: 1 if the first sentence has >= 15 words, else 2."""
    words = [w for w in long_sentences[0].split(" ") if w] if long_sentences else []
    return 1 if len(words) >= LONG_FIRST_SENTENCE else 2


def choose_caption(long: str, short: str | None, rng: np.random.Generator, *, short_prob: float,
                   dynamic_length: bool, long_type: str | None = None) -> Caption:
    """The official caption policy (see the module docstring) for captions encoded on the fly."""
    u = rng.random()
    if dynamic_length and (long_type or USER_PROMPT) != USER_PROMPT:
        parts = sentences(long)
        n = short_fallback_count(parts)
        field = "text" if short else None
        if not short:
            short = ".".join(parts[:n])
        if u < short_prob and short:
            return Caption(process_short_text(short), field)
        if len(parts) <= n:
            return Caption(process_short_text(long), "long_caption")
        k = int(rng.integers(n + 1, len(parts) + 1))
        return Caption(process_short_text(".".join(parts[:k])), "long_caption" if k == len(parts) else None)
    if short and u < short_prob:
        return Caption(process_short_text(short), "text")
    return Caption(process_short_text(long), "long_caption")


def stored_caption(long: str, short: str | None, rng: np.random.Generator, *, short_prob: float) -> Caption:
    """The caption whose precomputed features are used: the record's short one with probability
    ``short_prob`` when it exists, else the long one (a missing short caption never fails)."""
    if short and rng.random() < short_prob:
        return Caption(short, "text")
    return Caption(long, "long_caption")
