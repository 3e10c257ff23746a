"""Text for steering: parallel Wikipedia leads for the vectors, English prompts for the evaluation.

The vector set and the evaluation prompts never share an article: prompts come from wiki-en titles
that are not in any language's vector set (split deterministically by a hash of the title).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from ._core import ConfigError, StageError, open_corpus

INSTRUCT_PROMPTS = [
    "Write a short paragraph about the ocean.",
    "Describe your favourite season and explain why you like it.",
    "Explain how a bicycle works.",
    "Give three tips for learning to cook.",
    "Tell me a short story about a lost dog who finds its way home.",
    "What are the benefits of reading books every day?",
    "Describe a busy market in a large city.",
    "Explain why the sky is blue.",
    "Write a letter to a friend about your last holiday.",
    "List some good habits for staying healthy.",
    "Describe how bread is made.",
    "What makes a good teacher?",
    "Explain the difference between weather and climate.",
    "Write a few sentences about the history of trains.",
    "Describe the view from the top of a mountain.",
    "Give advice to someone starting their first job.",
    "Explain what a computer does, for a child.",
    "Describe a family dinner on a winter evening.",
    "Why do people keep pets?",
    "Write a short description of a quiet village by a river.",
    "Explain how plants grow from seeds.",
    "Describe a football match from the point of view of a fan.",
    "What should a tourist see on a first visit to a new country?",
    "Explain why sleep is important.",
    "Write a short review of a film you enjoyed.",
    "Describe the sounds of a forest in the morning.",
    "Explain how to plan a small garden.",
    "What are the main jobs of a city mayor?",
    "Describe a day at the beach.",
    "Give instructions for making a cup of tea.",
    "Explain why people learn foreign languages.",
    "Write a short poem about the rain.",
]


def _rank(title: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{title}".encode()).hexdigest()


@functools.lru_cache(maxsize=8)
def _load(lang: str) -> dict[str, str]:
    """``{doc_id: text}`` of the registered corpus ``wiki-<lang>`` (another plugin can add languages)."""
    return {d["doc_id"]: d["text"] for d in open_corpus(f"wiki-{lang}")}


def parallel_pairs(lang: str, n: int, seed: int = 0, exclude: frozenset[str] = frozenset()) -> list[tuple[str, str, str]]:
    """``n`` (title, target-language lead, English lead) for articles present in both languages,
    in a seeded hash order (the first ``n`` of it: a larger ``n`` extends a smaller one); titles in
    ``exclude`` (e.g. documents a stitch was fitted on) are skipped."""
    if lang == "en":
        raise ConfigError("steering target language cannot be 'en' (English is the reference)")
    tgt = _load(lang)
    en = _load("en")
    titles = sorted((set(tgt) & set(en)) - set(exclude), key=lambda t: _rank(t, f"{seed}:{lang}"))
    if len(titles) < n:
        left = " outside the excluded documents" if exclude else ""
        raise ConfigError(f"steering.vector_docs={n} but only {len(titles)} articles exist in both en and {lang}{left}")
    return [(t, tgt[t], en[t]) for t in titles[:n]]


def opening(text: str, words: int) -> str:
    """The first ``words`` words of ``text`` (a continuation prompt)."""
    return " ".join(text.split()[:words])


def wiki_prompts(n: int, words: int, exclude: set[str], seed: int = 0) -> list[str]:
    en = _load("en")
    titles = sorted((t for t in en if t not in exclude), key=lambda t: _rank(t, f"{seed}:prompts"))
    return [opening(en[t], words) for t in titles[:n]]


def file_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompt file not found: {p}")
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as exc:
        raise ConfigError(f"prompt file {p} is not UTF-8 text (byte {exc.start})") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ConfigError(f"prompt file {p} has no non-empty lines")
    return lines


def build_prompts(sources: list[str], n: int, words: int, exclude: set[str], seed: int = 0) -> list[dict]:
    """Up to ``n`` prompts ``{"source", "text"}`` shared out over ``sources`` in order: each source
    gets an equal share, and what a short source leaves is filled by the next ones."""
    if not sources:
        raise ConfigError("steering.prompts is empty (use wiki, instruct and/or file:PATH)")
    pools: list[tuple[str, list[str]]] = []
    for src in sources:
        if src == "wiki":
            pools.append(("wiki", wiki_prompts(n, words, exclude, seed)))
        elif src == "instruct":
            pools.append(("instruct", list(INSTRUCT_PROMPTS)))
        elif src.startswith("file:"):
            pools.append((src, file_prompts(src[5:])))
        else:
            raise ConfigError(f"unknown prompt source {src!r} (use wiki, instruct or file:PATH)")
    out: list[dict] = []
    left = n
    for i, (name, pool) in enumerate(pools):
        share = -(-left // (len(pools) - i))  # ceil: earlier sources take the rounding
        take = pool[:share]
        out += [{"source": name, "text": t} for t in take]
        left -= len(take)
    if not out:
        raise StageError("no evaluation prompts")
    return out
