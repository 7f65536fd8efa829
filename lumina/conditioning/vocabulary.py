"""The closed vocabulary of a model trained on few caption words (lumina's shapes model knows about 40).

The trainer's export records the words of the training captions in ``lumina_pipeline.json`` (``vocabulary``) when
they are few (at most :data:`MAX_VOCABULARY`); the pipeline then warns, naming them, about prompt words outside it:
the model has never seen them, so it draws something for the words it knows and ignores the rest (a soft failure,
not an error).
"""
from __future__ import annotations

import re
import warnings
from typing import Iterable

__all__ = ["MAX_VOCABULARY", "UnknownWordsWarning", "words", "caption_vocabulary", "unknown_words", "warn_unknown"]

MAX_VOCABULARY = 512  # more distinct caption words than this: an open vocabulary, nothing recorded

_WORD = re.compile(r"[a-z]+")


class UnknownWordsWarning(UserWarning):
    """A prompt uses words that the model's training captions never did."""


def words(text: str) -> list[str]:
    """The lower-case alphabetic words of ``text`` ("Top-left: a Red circle!" -> top, left, a, red, circle)."""
    return _WORD.findall(str(text).lower())


def caption_vocabulary(captions: Iterable[str], limit: int = MAX_VOCABULARY) -> list[str] | None:
    """The sorted distinct words of ``captions``, or None when there are more than ``limit`` (an open vocabulary)."""
    seen: set[str] = set()
    for text in captions:
        seen.update(words(text))
        if len(seen) > limit:
            return None
    return sorted(seen)


def unknown_words(prompts: Iterable[str], vocabulary: Iterable[str]) -> list[str]:
    """The distinct words of ``prompts`` that are not in ``vocabulary``, in order of first use."""
    known = set(vocabulary)
    out: list[str] = []
    for text in prompts:
        out += [w for w in words(text) if w not in known and w not in out]
    return out


def warn_unknown(prompts: Iterable[str], vocabulary: list[str] | None) -> list[str]:
    """Warn (:class:`UnknownWordsWarning`) naming the prompt words outside ``vocabulary``; returns them."""
    if not vocabulary:
        return []
    unknown = unknown_words(prompts, vocabulary)
    if unknown:
        shown = ", ".join(repr(w) for w in unknown[:12]) + (" ..." if len(unknown) > 12 else "")
        warnings.warn(f"the model does not know the word(s) {shown}: its training captions used only "
                      f"{len(vocabulary)} words ({', '.join(vocabulary[:60])}); it ignores the rest of the prompt",
                      UnknownWordsWarning, stacklevel=3)
    return unknown
