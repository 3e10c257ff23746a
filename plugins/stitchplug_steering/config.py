"""The ``steering`` section of a run's config, and its presets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stitchplug.api import CONTEXT_LENGTH, ConfigSection


class SteeringConfig(ConfigSection):
    """Language steering vectors (paper section 4): vector, intervention, transfer, evaluation."""

    languages: list[str] = ["fr", "es"]
    """Target languages (wiki-<lang> must be a registered corpus with titles shared with wiki-en)."""
    vector_docs: int = Field(200, ge=1)
    """Parallel lead pairs (target language and English, same article) per language for the vector."""
    vector_tokens: int = Field(64, ge=2, json_schema_extra={CONTEXT_LENGTH: True})
    """At most this many tokens of each lead are read."""
    intervention: Literal["clamp", "add"] = "clamp"
    """'clamp': h + (z - <h,v>) v at every position (the paper); 'add': h + (z - z_en) v."""
    z_mode: Literal["literal", "offset"] = "literal"
    """'literal': z = scale * mean <h,v> over target-language tokens (the paper, scale 1);
    'offset': z = z_en + scale * (z_target - z_en), from the English mean."""
    z_scale: float = Field(1.0, ge=-100.0, le=100.0)
    """The scale in z_mode."""
    exclude_massive: bool = False
    """Zero the massive-activation dimensions of every vector (before and after mapping), then renormalise."""
    directions: list[Literal["up", "down"]] = ["up", "down"]
    """Transfer directions evaluated: up = A -> B through P_up, down = B -> A through P_down."""
    arms: list[Literal["none", "native", "transferred", "random"]] = ["none", "native", "transferred", "random"]
    """Arms evaluated (random is clamped at the transferred arm's z, else the native arm's)."""
    prompts: list[str] = ["wiki", "instruct"]
    """Prompt sources: 'wiki' (held-out wiki-en openings), 'instruct' (the plugin's instruction
    prompts), 'file:PATH' (one prompt per line)."""
    n_prompts: int = Field(200, ge=1)
    """Prompts evaluated (shared out over the sources, in order)."""
    prompt_words: int = Field(12, ge=1)
    """Words of a wiki-en lead used as a continuation prompt."""
    max_new_tokens: int = Field(40, ge=1, json_schema_extra={CONTEXT_LENGTH: True})
    """Tokens generated per prompt."""
    temperature: float = Field(0.0, ge=0.0)
    """0 = greedy; otherwise sampled with the run's seed."""
    detector: Literal["langdetect", "lingua", "lingua-fast"] = "langdetect"
    """Language detector for the share in the target language."""
    agreement_detector: Literal["none", "langdetect", "lingua", "lingua-fast"] = "lingua"
    """Second detector run on the same texts to report agreement ('none' to skip)."""
    fluency: bool = True
    """Score each steered text with the unsteered model's loss (nats/token)."""
    examples: int = Field(3, ge=0)
    """Example generations per arm in report.md."""


PRESETS: dict[str, dict] = {
    "quick": {"languages": ["fr"], "vector_docs": 64, "n_prompts": 24, "max_new_tokens": 24},
    "default": {},
}
