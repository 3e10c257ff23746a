"""Sentence augmenters for the semantic-vs-structural split: rewrite a sentence keeping its syntax.

An augmenter implements :class:`Augmenter` (``rewrite(text, n, seed, topic) -> n strings``).
Augmenters are found by name: the built-in ``content-swap`` and any entry point in the group
``stitchplug.augmenters`` (``name = "package.module:factory"``; ``factory(donors=..., **kw)``
returns an :class:`Augmenter`), so an LLM-based rewriter can be plugged in where a generator is
available.

``content-swap`` (offline default): words in scikit-learn's English stop-word list (function words),
punctuation, whitespace and word order are kept; every other word is replaced by a different word of
the same rough class drawn from donor documents of *other topics*. The class is: number (same digit
count), capitalised or not, and the suffix (``-ly``, ``-ing``, ``-ed``, ``-tion``/``-sion``,
``-al``/``-ic``/``-ous``/``-ive``/``-ful``/``-able``, ``-s``, other) -- a crude stand-in for a
part-of-speech tagger, which needs data files this tool cannot assume offline.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from importlib import metadata
from typing import Iterable

from ._core import StitchplugError

GROUP = "stitchplug.augmenters"
_TOKEN = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+|\s+|[^\w\s]|_", re.UNICODE)
_SUFFIXES = (("ly",), ("ing",), ("ed",), ("tion", "sion"), ("al", "ic", "ous", "ive", "ful", "able"), ("s",))


def function_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def is_content(word: str, stop: frozenset[str]) -> bool:
    """Alphabetic or numeric tokens that are not function words."""
    return bool(word) and (word.isdigit() or (word[0].isalpha() and word.lower() not in stop))


def word_class(word: str) -> tuple:
    """The rough class a replacement must share with ``word``."""
    if word.isdigit():
        return ("num", len(word))
    low = word.lower()
    suffix = next((i for i, group in enumerate(_SUFFIXES) if low.endswith(group) and len(low) > 3), -1)
    return ("word", word[0].isupper(), suffix)


class Augmenter(ABC):
    """Rewrites a sentence ``n`` times keeping its structure (function words, punctuation, order)."""

    name: str = ""

    @abstractmethod
    def rewrite(self, text: str, n: int, seed: int = 0, topic: str | None = None) -> list[str]:
        """``n`` rewrites of ``text`` (``topic``: the sentence's own topic, to draw words from others)."""


class ContentSwapAugmenter(Augmenter):
    """The offline default (see the module docstring). ``donors``: dicts with ``text`` and ``topic``."""

    name = "content-swap"

    def __init__(self, donors: Iterable[dict]):
        self.stop = function_words()
        self.pool: dict[str, dict[tuple, list[str]]] = {}
        for d in donors:
            topic = str(d.get("topic") or d.get("doc_id") or "")
            by_class = self.pool.setdefault(topic, {})
            for w in _TOKEN.findall(d.get("text") or ""):
                if is_content(w, self.stop) and not w.isdigit():
                    by_class.setdefault(word_class(w), []).append(w)
        for by_class in self.pool.values():
            for k, words in by_class.items():
                by_class[k] = sorted(set(words))
        if not self.pool:
            raise StitchplugError("the content-swap augmenter needs donor documents")

    def _candidates(self, word: str, topic: str | None) -> list[str]:
        cls = word_class(word)
        out: list[str] = []
        for t, by_class in sorted(self.pool.items()):
            if topic is not None and t == topic and len(self.pool) > 1:
                continue
            out.extend(by_class.get(cls, ()))
        return [w for w in out if w.lower() != word.lower()]

    def rewrite(self, text: str, n: int, seed: int = 0, topic: str | None = None) -> list[str]:
        rng = random.Random(f"{seed}:{text}")
        pieces = _TOKEN.findall(text)
        cands = {w: self._candidates(w, topic) for w in set(pieces) if is_content(w, self.stop) and not w.isdigit()}
        out = []
        for _ in range(n):
            new = []
            for w in pieces:
                if w.isdigit():
                    first = rng.choice("123456789") if len(w) > 1 else rng.choice("0123456789".replace(w, ""))
                    rest = "".join(rng.choice("0123456789") for _ in range(len(w) - 1))
                    new.append(first + rest if first + rest != w else str(int(w) + 1))
                elif w in cands and cands[w]:
                    new.append(rng.choice(cands[w]))
                else:
                    new.append(w)
            out.append("".join(new))
        return out


def augmenter_names() -> list[str]:
    return sorted({"content-swap"} | {ep.name for ep in metadata.entry_points(group=GROUP)})


def get_augmenter(name: str, donors: Iterable[dict], **kw) -> Augmenter:
    """The augmenter registered as ``name`` (built-in or entry point), built with ``donors``."""
    if name == "content-swap":
        return ContentSwapAugmenter(donors)
    for ep in metadata.entry_points(group=GROUP):
        if ep.name == name:
            try:
                return ep.load()(donors=donors, **kw)
            except Exception as exc:
                raise StitchplugError(f"augmenter {name!r} failed to load: {type(exc).__name__}: {exc}") from None
    raise StitchplugError(f"unknown augmenter {name!r} (known: {', '.join(augmenter_names())})")
