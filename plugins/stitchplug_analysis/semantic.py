"""Semantic vs structural latents (paper §5): does a latent survive rewriting the content words?

Each held-out sentence is rewritten ``n_versions`` times by an augmenter
(:mod:`stitchplug_analysis.augment`); a latent *fires on a version* when it is non-zero at any
non-special position of it. Per sentence, a latent that fires on some version fires on all
``n_versions + 1`` (structural for that sentence) or on some but not all (semantic for that
sentence). Over sentences a latent is **structural** when it fired on all versions in at least half
the sentences where it fired at all, **semantic** otherwise, and **rare** when it fired in fewer than
``min_sentences`` sentences (not classified).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .common import codes

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def sentences(docs: Iterable[dict], max_sentences: int, min_words: int = 6, max_chars: int = 300) -> list[dict]:
    """Up to ``max_sentences`` sentences (``{"text", "topic"}``) of ``docs``, one document after another."""
    out: list[dict] = []
    for d in docs:
        for s in _SENT.split((d.get("text") or "").strip()):
            s = s.strip()
            if len(s.split()) >= min_words and len(s) <= max_chars:
                out.append({"text": s, "topic": str(d.get("topic") or d.get("doc_id") or "")})
                if len(out) >= max_sentences:
                    return out
    return out


@torch.no_grad()
def fired_any(adapter: Any, sae: Any, layer: int, text: str) -> np.ndarray:
    """Boolean ``[m]``: latents non-zero at some non-special position of ``text``."""
    enc = adapter.encode(text)
    resid = adapter.capture(enc.ids[None], [layer])[layer][0].float().cpu()
    f = codes(sae, resid)[~enc.special.cpu()]
    return (f != 0).any(0).numpy()


def classify(adapter: Any, sae: Any, layer: int, sents: Sequence[dict], augmenter: Any, n_versions: int = 5,
             seed: int = 0, min_sentences: int = 2, progress: bool = False) -> dict:
    """Per-latent class (``structural`` / ``semantic`` / ``rare``) and the counts behind it."""
    n_any = n_all = None
    examples = []
    it = sents
    if progress:
        from stitchplug.api import progress as tqdm

        it = tqdm(sents, desc="semantic/structural", leave=False)
    for k, s in enumerate(it):
        versions = [s["text"]] + augmenter.rewrite(s["text"], n_versions, seed=seed + k, topic=s.get("topic"))
        if k < 2:
            examples.append(versions[:3])
        fired = np.stack([fired_any(adapter, sae, layer, v) for v in versions])  # [V, m]
        cnt = fired.sum(0)
        a, b = cnt > 0, cnt == len(versions)
        n_any = a.astype(int) if n_any is None else n_any + a
        n_all = b.astype(int) if n_all is None else n_all + b
    if n_any is None:
        return {"n_sentences": 0, "classes": [], "counts": {}}
    frac = n_all / np.maximum(n_any, 1)
    cls = np.where(n_any < min_sentences, "rare", np.where(frac >= 0.5, "structural", "semantic"))
    counts = {c: int((cls == c).sum()) for c in ("structural", "semantic", "rare")}
    return {"n_sentences": len(sents), "n_versions": n_versions + 1, "classes": cls.tolist(),
            "all_versions_fraction": [float(v) for v in frac], "counts": counts, "examples": examples,
            "augmenter": getattr(augmenter, "name", type(augmenter).__name__)}


def per_class_transferability(classes: Sequence[str], per_latent: Sequence[float | None]) -> dict:
    """Transferability summary per class (latents dead for Eq. 10 are left out)."""
    from .transferability import _summary

    out = {}
    r = np.array([np.nan if v is None else v for v in per_latent], dtype=float)
    cls = np.asarray(classes)
    for c in ("structural", "semantic"):
        vals = r[(cls == c) & np.isfinite(r)]
        s = _summary(vals)
        if vals.size:
            s["std"] = float(vals.std())
            s["share_tails"] = float(((vals > 0.5) | (vals < 0.1)).mean())
        out[c] = s
    return out
