"""Which documents a stitch was fitted on, and text held out from every fit of an experiment.

A cache splits its documents into ``train`` (what the stitch is fitted on) and ``eval`` (held out),
by document. For a ``mix:`` corpus each document's id carries its component (``wiki-fr:Paris``), so
:func:`split_coverage` counts both splits per component (a component with no held-out document is
refused by the experiment). :func:`select_heldout` then draws, with seeded random choices, everything
the steering evaluation reads from documents that *no* stitch of the experiment was fitted on:

- the vector pairs (target-language lead + English lead of the same article),
- the English continuation prompts (openings of other English articles; not the plugin's list),
- the texts whose tokens measure each stitch's held-out FVU per language,

and :func:`overlaps` measures the intersections that must be empty (the experiment asserts it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._core import ConfigError, StageError, parse_mix
from .data import _load, opening, parallel_pairs

Doc = tuple[str, str]
"""``(component corpus, doc_id)``: ``("wiki-fr", "Paris")``."""


def components(corpus: str) -> list[str]:
    """The corpora a fitting text reads (one, or a mix's components)."""
    return [c for c, _ in parse_mix(corpus)] if corpus.startswith("mix:") else [corpus]


def qualify(corpus: str, key: str) -> Doc:
    """A cached document id as ``(component, doc_id)``."""
    if not corpus.startswith("mix:"):
        return corpus, key
    for comp in sorted(components(corpus), key=len, reverse=True):
        if key.startswith(comp + ":"):
            return comp, key[len(comp) + 1:]
    raise StageError(f"cached document {key!r} names none of the components of {corpus!r}")


def split_docs(cache, corpus: str, split: str) -> set[Doc]:
    """The documents of a cache's ``split`` ('train' = the fitting documents, or 'eval')."""
    return {qualify(corpus, k) for k in cache.doc_keys(split)}


def split_coverage(cache, corpus: str) -> dict[str, dict[str, int]]:
    """``{component: {"train": documents, "eval": documents}}`` of a cache (every component listed)."""
    out = {c: {"train": 0, "eval": 0} for c in components(corpus)}
    for split in ("train", "eval"):
        for comp, _ in split_docs(cache, corpus, split):
            out[comp][split] += 1
    return out


def require_heldout(folder: str, coverage: dict[str, dict[str, int]]) -> None:
    """Refuse a cache whose eval split holds no document of some component (one line)."""
    empty = [c for c, n in coverage.items() if n["eval"] == 0]
    if empty:
        raise StageError(f"{folder}: the cache's eval split holds no document of {', '.join(empty)}; "
                         "raise the size or cache.eval_fraction")


@dataclass
class Heldout:
    """Everything the steering evaluation reads, drawn outside every fitting set."""

    pairs: dict[str, list[tuple[str, str, str]]]
    prompts: list[dict]
    fvu_texts: dict[str, list[str]]
    fvu_titles: dict[str, list[str]] = field(default_factory=dict)

    def vector_titles(self) -> dict[str, set[str]]:
        """Titles per corpus language the vectors read (``en`` holds every pair's English lead)."""
        out: dict[str, set[str]] = {"en": set()}
        for lang, pairs in self.pairs.items():
            out[lang] = {t for t, _, _ in pairs}
            out["en"] |= out[lang]
        return out

    def vector_texts(self) -> dict[str, list[str]]:
        """Texts per language for the language statistics (English: each pair's lead, once)."""
        texts: dict[str, list[str]] = {"en": []}
        seen: set[str] = set()
        for lang, pairs in self.pairs.items():
            texts[lang] = [p[1] for p in pairs]
            for title, _, en in pairs:
                if title not in seen:
                    seen.add(title)
                    texts["en"].append(en)
        return texts


def _choose(pool: set[str], n: int, seed: int, what: str) -> list[str]:
    pool_l = sorted(pool)
    if len(pool_l) < n:
        raise ConfigError(f"{what}: {n} wanted but only {len(pool_l)} documents are held out from every fit "
                          "(fewer, or smaller fitting sizes)")
    idx = np.random.default_rng(seed).choice(len(pool_l), size=n, replace=False)
    return [pool_l[i] for i in idx]


def _fitted(fitted: set[Doc], lang: str) -> set[str]:
    return {d for c, d in fitted if c == f"wiki-{lang}"}


def select_heldout(fitted: set[Doc], languages: list[str], vector_docs: int, n_prompts: int, prompt_words: int,
                   fvu_docs: int, seed: int = 0) -> Heldout:
    """Vector pairs, prompts and FVU texts from documents outside ``fitted`` (every fit's training
    documents), disjoint from one another; seeded random choices."""
    if "en" in languages:
        raise ConfigError("a steering target language cannot be 'en' (English is the reference)")
    fit_en = _fitted(fitted, "en")
    pairs = {L: parallel_pairs(L, vector_docs, seed, frozenset(fit_en | _fitted(fitted, L))) for L in languages}
    used = {L: {t for t, _, _ in p} for L, p in pairs.items()}
    used_en = set().union(*used.values()) if used else set()
    en = _load("en")
    prompt_titles = _choose(set(en) - fit_en - used_en, n_prompts, seed, "steering prompts")
    prompts = [{"source": "heldout-wiki-en", "doc_id": t, "text": opening(en[t], prompt_words)} for t in prompt_titles]
    fvu_titles, fvu_texts = {}, {}
    for i, L in enumerate(["en", *languages]):
        docs = _load(L)
        taken = used_en | set(prompt_titles) if L == "en" else used[L]
        fvu_titles[L] = _choose(set(docs) - _fitted(fitted, L) - taken, fvu_docs, seed + 1 + i, f"FVU texts ({L})")
        fvu_texts[L] = [docs[t] for t in fvu_titles[L]]
    return Heldout(pairs, prompts, fvu_texts, fvu_titles)


def overlaps(held: Heldout, fitted: set[Doc]) -> dict[str, int]:
    """Document counts in intersections that must all be 0."""
    vt = held.vector_titles()
    prompts = {p["doc_id"] for p in held.prompts}
    out = {f"vectors_{L}_x_fitting": len(t & _fitted(fitted, L)) for L, t in vt.items()}
    out["prompts_x_fitting"] = len(prompts & _fitted(fitted, "en"))
    out["prompts_x_vectors"] = len(prompts & vt["en"])
    for L, titles in held.fvu_titles.items():
        out[f"fvu_{L}_x_fitting"] = len(set(titles) & _fitted(fitted, L))
        out[f"fvu_{L}_x_vectors"] = len(set(titles) & vt.get(L, set()))
    return out


def assert_disjoint(counts: dict[str, int]) -> None:
    bad = {k: v for k, v in counts.items() if v}
    if bad:
        raise StageError("held-out text overlaps fitting or vector documents: "
                         + ", ".join(f"{k}={v}" for k, v in bad.items()))
