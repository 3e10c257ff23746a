"""The ``sae:`` section of a run config (``--sae-*`` flags), owned by the SAE artifact kind."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stitchplug.api import ConfigSection


class SAEConfig(ConfigSection):
    """Source SAE: trained on A or loaded."""

    source: str = "train"
    """'train' to train a TopK SAE on A, a SAELens-format folder, or 'release:ID' from the hub."""
    width: int = Field(4608, ge=1)
    """Number of latents of the source SAE."""
    k: int = Field(32, ge=1)
    """TopK sparsity."""
    lr: float = Field(1e-4, gt=0)
    """SAE learning rate."""
    train_tokens: int = Field(2_000_000, ge=1)
    """Tokens of SAE training (cached activations are reused across epochs)."""
    batch_size: int = Field(1024, ge=1)
    """Tokens per SAE training step."""
    aux_k_coef: float = Field(0.0, ge=0.0)
    """AuxK loss coefficient on dead latents (0: off, the paper's setting; Gao et al. use 1/32)."""
    dead_window: int = Field(200, ge=1)
    """Steps without firing after which a latent counts as dead (for AuxK)."""
    lr_width_ref: int | None = Field(None, ge=1)
    """If set, the SAE lr is scaled by sqrt(lr_width_ref / width) (1/sqrt(width) scaling)."""
    normalize: Literal["none", "expected_norm"] = "none"
    """'expected_norm': train on activations scaled to mean norm sqrt(d_in); the scale is folded back on save."""
    allow_tf32: bool = False
    """On CUDA, let the trainer's float32 matmuls use TF32 tensor cores (2.25x faster on an H200, 10-bit mantissa); a no-op on the CPU."""

    @model_validator(mode="after")
    def _k_fits(self):
        if self.k > self.width:
            raise ValueError(f"k ({self.k}) must be at most width ({self.width})")
        return self


PRESETS = {
    "quick": {"width": 2304, "k": 32, "train_tokens": 240_000, "lr": 4e-4},
}
