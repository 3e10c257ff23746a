"""The ``sae:`` section of a run config (``--sae-*`` flags), owned by the SAE artifact kind.

It is the core's one SAE config (:class:`stitchplug.api.TrainerConfig`: the trainer's fields and
defaults) plus where the source SAE comes from; probe, analysis and the init experiment read the
same section (the probe through ``requires = ("sae",)``).
"""

from __future__ import annotations

from pydantic import ConfigDict, model_validator

from stitchplug.api import ConfigSection, TrainerConfig


class SAEConfig(TrainerConfig, ConfigSection):
    """Source SAE: trained on A with the project's TopK trainer, or loaded."""

    source: str = "train"
    """'train' to train a TopK SAE on A, a SAELens-format folder, or 'release:ID' from the hub."""

    @model_validator(mode="after")
    def _k_fits(self):
        if self.k > self.width:
            raise ValueError(f"k ({self.k}) must be at most width ({self.width})")
        return self


PRESETS = {
    "quick": {"width": 2304, "k": 32, "train_tokens": 240_000, "lr": 4e-4},
}
