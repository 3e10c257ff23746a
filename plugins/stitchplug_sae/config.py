"""The ``sae:`` section of a run config (``--sae-*`` flags), owned by the SAE artifact kind."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


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


PRESETS = {
    "quick": {"width": 2304, "k": 32, "train_tokens": 240_000, "lr": 4e-4},
}
