"""The language detector as an evaluator: share of texts in a language, with an exact interval.

``evaluate(artifact, context)`` reads texts from ``artifact`` (a list of strings, or a dict with a
``texts`` list and optionally ``lang``) and returns label counts and the share in ``lang``.
"""

from __future__ import annotations

from typing import Any

from ._core import ArtifactContext, Evaluator, StageError
from .detect import detect_all
from .stats import share


class LanguageShare(Evaluator):
    applies_to = {"steering"}

    def __init__(self, detector: str = "langdetect"):
        self.detector = detector
        self.name = f"language_{detector}"

    def evaluate(self, artifact: Any, context: ArtifactContext | None = None) -> dict:
        if isinstance(artifact, dict):
            texts, lang = artifact.get("texts"), artifact.get("lang")
        else:
            texts, lang = artifact, None
        if texts is None or isinstance(texts, str):
            raise StageError(f"evaluator {self.name} needs a list of texts")
        labels = detect_all(list(texts), self.detector)
        counts: dict[str, int] = {}
        for x in labels:
            counts[x] = counts.get(x, 0) + 1
        out = {"labels": labels, "counts": counts, "n": len(labels)}
        if lang:
            out["share"] = share(counts.get(lang, 0), len(labels))
        return out
