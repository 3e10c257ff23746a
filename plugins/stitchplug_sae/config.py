"""The ``sae:`` section of a run config (``--sae-*`` flags), owned by the SAE artifact kind."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SAEConfig(BaseModel):
    """Source SAE: trained on A or loaded."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    source: str = "train"
    """'train' to train a TopK SAE on A, a SAELens-format folder, or 'release:ID' from the hub."""
    width: int = 4608
    """Number of latents of the source SAE."""
    k: int = 32
    """TopK sparsity."""
    lr: float = 1e-4
    """SAE learning rate."""
    train_tokens: int = 2_000_000
    """Tokens of SAE training (cached activations are reused across epochs)."""
    batch_size: int = 1024
    """Tokens per SAE training step."""
    aux_k_coef: float = Field(0.0, ge=0.0)
    """AuxK loss coefficient on dead latents (0: off, the paper's setting; Gao et al. use 1/32)."""
    dead_window: int = Field(200, ge=1)
    """Steps without firing after which a latent counts as dead (for AuxK)."""
    lr_width_ref: int | None = Field(None, ge=1)
    """If set, the SAE lr is scaled by sqrt(lr_width_ref / width) (1/sqrt(width) scaling)."""
    normalize: Literal["none", "expected_norm"] = "none"
    """'expected_norm': train on activations scaled to mean norm sqrt(d_in); the scale is folded back on save."""


PRESETS = {
    "quick": {"width": 2304, "k": 32, "train_tokens": 240_000, "lr": 4e-4},
}
