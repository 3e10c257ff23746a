"""Settings of ``stitchplug experiment steering-fit`` and the names of its stitch folders."""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

QUICK_TOKENS = 24_000
"""``--sizes quick``: the quick preset's cache budget (cache.tokens)."""

DEFAULT_FITTING = ["wiki-en", "mix:wiki-en=0.8,wiki-fr=0.1,wiki-es=0.1", "mix:wiki-en=0.6,wiki-fr=0.2,wiki-es=0.2"]


class SteeringFitConfig(BaseModel):
    """Steering transfer as a function of the stitch's fitting text and size."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    fitting: list[str] = DEFAULT_FITTING
    """Fitting texts (cache corpora): a registered corpus or a mix:A=w,B=w of them."""
    sizes: list[int] = [QUICK_TOKENS, 1_000_000]
    """Cache budgets (cache.tokens, training plus held-out) per fitting text."""
    preset: str = "quick"
    """Run preset every stitch folder starts from (its cache.tokens is replaced by each size)."""
    run_overrides: dict = {}
    """Extra run-config keys for every stitch folder (dotted: models.source, stitch.svcca_tokens ...)."""
    languages: list[str] = ["fr", "es"]
    """Target languages (wiki-<lang> with titles shared with wiki-en)."""
    vector_docs: int = Field(40, ge=1)
    """Vector pairs per language, drawn outside every fit's training documents (40: the default three
    fitting texts at 1M tokens leave only 46 en/es article pairs outside their training documents)."""
    vector_tokens: int = Field(64, ge=2)
    """Tokens read from each vector text."""
    n_prompts: int = Field(40, ge=1)
    """English prompts (openings of held-out wiki-en articles, seeded random choice) per arm."""
    prompt_words: int = Field(12, ge=1)
    """Words of each prompt."""
    max_new_tokens: int = Field(24, ge=1)
    """Tokens generated per prompt (greedy)."""
    fvu_docs: int = Field(32, ge=1)
    """Held-out documents per language (en and each target) whose tokens measure each stitch's FVU."""
    intervention: Literal["clamp", "add"] = "clamp"
    """Intervention of every steered arm (see the steering section)."""
    z_mode: Literal["literal", "offset"] = "literal"
    """z of every steered arm: 'literal' (the paper) or 'offset' from the English mean."""
    z_scale: float = Field(1.0, ge=-100.0, le=100.0)
    """The scale in z_mode."""
    diagnose: bool = True
    """Also evaluate the swaps that explain a failed transfer: massive dims excluded, z mapped through the stitch."""
    detector: Literal["langdetect", "lingua", "lingua-fast"] = "langdetect"
    """Primary language detector."""
    agreement_detector: Literal["none", "langdetect", "lingua", "lingua-fast"] = "lingua"
    """Second detector, run on the same texts (its shares are reported too)."""
    fluency: bool = True
    """Score each continuation with the unsteered model's loss (nats/token)."""
    bootstrap: int = Field(2000, ge=100)
    """Paired bootstrap resamples over prompts for the gap's and the swaps' intervals."""
    seed: int = Field(0, ge=0)
    """Seed of the stitches, the held-out draws, generation and the bootstrap."""

    @field_validator("sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(s < 1 for s in v):
            raise ValueError("sizes must be positive token counts")
        return v


def parse_sizes(raw: str) -> list[int]:
    """``quick,1000000`` / ``24k,1m`` -> token counts (one-line ValueError naming a bad item)."""
    out = []
    for item in raw.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item == "quick":
            out.append(QUICK_TOKENS)
            continue
        mult = {"k": 1_000, "m": 1_000_000}.get(item[-1], 1)
        num = item[:-1] if mult > 1 else item
        try:
            val = float(num) * mult
        except ValueError:
            raise ValueError(f"size {item!r} is not a token count (quick, 24000, 24k, 1m)") from None
        if val < 1 or val != int(val):
            raise ValueError(f"size {item!r} is not a positive whole number of tokens")
        out.append(int(val))
    if not out:
        raise ValueError("no sizes given")
    return out


def fit_label(corpus: str) -> str:
    """A folder-safe name of a fitting text: ``wiki-en``, ``mix-wiki-en60-wiki-fr20-wiki-es20``."""
    if corpus.startswith("mix:"):
        from ._core import parse_mix

        label = "mix-" + "-".join(f"{c}{round(100 * w)}" for c, w in parse_mix(corpus))
    else:
        label = corpus
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label)
    if safe != label or len(safe) > 80:
        safe = safe[:60] + "-" + hashlib.sha256(corpus.encode()).hexdigest()[:8]
    return safe


def folder_name(corpus: str, tokens: int) -> str:
    return f"{fit_label(corpus)}-{tokens}"
