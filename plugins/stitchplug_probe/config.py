"""The probe kind's config section (``probe:`` in a config file, ``--probe-<field>`` flags) and presets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from stitchplug.api import CONTEXT_LENGTH, ConfigSection

WIKI_ALL = ["wiki-topic:People", "wiki-topic:Biology", "wiki-topic:Geography", "wiki-topic:Physical sciences",
            "wiki-topic:Society", "wiki-topic:Arts", "wiki-topic:Technology", "wiki-topic:History",
            "wiki-topic:Everyday life", "wiki-topic:Philosophy", "wiki-topic:Mathematics"]
SAE_PROBES_DEFAULT = [
    "sae-probes:113_movie_sent",      # sentiment
    "sae-probes:87_glue_cola",        # grammar (acceptability)
    "sae-probes:159_code_Python",     # code
    "sae-probes:5_hist_fig_ismale",   # entities
    "sae-probes:161_agnews_0",        # news topic
    "sae-probes:96_spam_is",          # spam
    "sae-probes:6_hist_fig_isamerican",
    "sae-probes:162_agnews_1",
]


class ProbeConfig(ConfigSection):
    tasks: list[str] = Field(default_factory=lambda: WIKI_ALL + SAE_PROBES_DEFAULT)
    """Binary tasks: wiki-topic:<Topic>, sae-probes:<name>, sae-probes:draw:N[:SEED] (N binary datasets drawn from the seed), file:PATH."""
    max_examples: int = Field(1000, ge=20)
    """Examples per task (balanced classes, subsampled from the seed)."""
    ks: list[int] = Field(default_factory=lambda: [1, 2, 5, 10, 20, 50])
    """Numbers of SAE latents in the sparse probes (top-k by class-mean difference)."""
    selection: Literal["abs", "signed"] = "abs"
    """Rank latents by the absolute class-mean difference ('abs', SAEBench) or the signed one ('signed')."""
    control_arms: bool = True
    """Also score two measured 'random' SAEs on B: random unit encoder directions, and the native SAE with each latent's weights shuffled."""
    pooling: Literal["mean", "last"] = "mean"
    """Pool latents over an example's non-special tokens ('mean', the paper) or take the last token."""
    context_size: int | None = Field(None, ge=2, json_schema_extra={CONTEXT_LENGTH: True})
    """Tokens per example on A (B reads the same characters); None: the cache's context size."""
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    """Held-out share of each task (stratified split from the seed)."""
    C: float = Field(1.0, gt=0.0)
    """Inverse L2 strength of the logistic regression (SAEBench: 1.0)."""
    batch_size: int = Field(8, ge=1)
    """Examples per forward pass."""
    native_sae: bool = True
    """Ask the ``sae`` kind for a native SAE on B (same trainer and budget as the source SAE) for the native arm."""
    n_boot: int = Field(2000, ge=100)
    """Bootstrap resamples for the intervals of means and gaps."""

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("ks must be a non-empty list of positive integers")
        return sorted(set(v))

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        from stitchplug.api import StitchplugError

        from .tasks import check_spec

        if not v:
            raise ValueError("at least one task is needed")
        for spec in v:
            try:
                check_spec(spec)
            except StitchplugError as exc:
                raise ValueError(str(exc)) from None
        if len(set(v)) != len(v):
            raise ValueError("a task is listed twice")
        return v


PRESETS = {
    "quick": {"tasks": ["wiki-topic:People", "wiki-topic:Mathematics", "sae-probes:113_movie_sent",
                        "sae-probes:87_glue_cola"],
              "max_examples": 300, "ks": [1, 2, 5, 10, 20, 50]},
    "default": {},
}
