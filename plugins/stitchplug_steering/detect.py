"""Language identification of generated text (ISO 639-1 codes; ``"unknown"`` when undecidable).

Two well-kept offline detectors: ``langdetect`` (what the paper used; a port of Google's
language-detection, made deterministic by seeding its factory) and ``lingua`` (lingua-language-
detector, deterministic, more accurate on short text in its own published comparison). Text with no
letters (empty, digits, punctuation) is ``"unknown"``, never an exception.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

from ._core import ConfigError

UNKNOWN = "unknown"


def _has_letters(text: str) -> bool:
    return any(ch.isalpha() for ch in text or "")


@functools.lru_cache(maxsize=1)
def _langdetect() -> Callable[[str], str]:
    try:
        from langdetect import DetectorFactory, detect
        from langdetect.lang_detect_exception import LangDetectException
    except ImportError:
        raise ConfigError("detector 'langdetect' needs: pip install langdetect") from None
    DetectorFactory.seed = 0

    def run(text: str) -> str:
        try:
            return detect(text).split("-")[0]
        except LangDetectException:
            return UNKNOWN

    return run


@functools.lru_cache(maxsize=2)
def _lingua(low_accuracy: bool = False) -> Callable[[str], str]:
    try:
        from lingua import LanguageDetectorBuilder
    except ImportError:
        raise ConfigError("detector 'lingua' needs: pip install lingua-language-detector") from None
    builder = LanguageDetectorBuilder.from_all_languages()
    # high accuracy loads every language's n-gram models on first use (~45 s on 2 busy cores);
    # low accuracy (trigrams only, ~2 s) is for tests and quick looks
    detector = (builder.with_low_accuracy_mode() if low_accuracy else builder).build()

    def run(text: str) -> str:
        lang = detector.detect_language_of(text)
        if lang is None:
            return UNKNOWN
        return lang.iso_code_639_1.name.lower()

    return run


DETECTORS = {"langdetect": _langdetect, "lingua": _lingua, "lingua-fast": lambda: _lingua(True)}


def detector(name: str) -> Callable[[str], str]:
    """``detect(text) -> code`` for the detector ``name`` (one-line ConfigError when not installed)."""
    if name not in DETECTORS:
        raise ConfigError(f"unknown language detector {name!r} (known: {', '.join(DETECTORS)})")
    run = DETECTORS[name]()

    def safe(text: str) -> str:
        return run(text) if _has_letters(text) else UNKNOWN

    return safe


def detect_all(texts: Sequence[str], name: str) -> list[str]:
    run = detector(name)
    return [run(t) for t in texts]


def agreement(a: Sequence[str], b: Sequence[str], lang: str | None = None) -> dict:
    """Share of texts two detectors label alike (and, for ``lang``, Cohen's kappa on "is lang")."""
    if len(a) != len(b):
        raise ValueError("agreement needs two label lists of the same length")
    n = len(a)
    if n == 0:
        return {"n": 0}
    out = {"n": n, "same_label": sum(x == y for x, y in zip(a, b)) / n}
    if lang is not None:
        from sklearn.metrics import cohen_kappa_score

        xa, xb = [x == lang for x in a], [y == lang for y in b]
        out["is_target_agree"] = sum(x == y for x, y in zip(xa, xb)) / n
        out["kappa"] = float(cohen_kappa_score(xa, xb)) if len(set(xa) | set(xb)) > 1 else 1.0
    return out
