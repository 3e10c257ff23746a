"""The project's one SAE config (:class:`TrainerConfig`), in a module that imports only pydantic, so
building CLI flags and run configs from it costs no torch or sae-lens import."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainerConfig(BaseModel):
    """The project's one SAE config: hyperparameters of one TopK SAE training run, with the default
    preset's budget as defaults (the paper's; ``--preset quick`` gives 2304 latents, lr 4e-4, 240k
    tokens). The ``sae`` kind's section extends it (``stitchplug_sae.config.SAEConfig``); the probe
    and analysis read that section, the init experiment composes it."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    width: int = Field(4608, ge=1)
    """Number of latents."""
    k: int = Field(32, ge=1)
    """Active latents per token (TopK)."""
    lr: float = Field(1e-4, gt=0)
    """Constant Adam learning rate (at ``lr_width_ref`` latents when that is set)."""
    train_tokens: int = Field(2_000_000, ge=1)
    """Training tokens (a re-iterable stream is cycled until this many were seen)."""
    batch_size: int = Field(1024, ge=1)
    """Tokens per step."""
    b_dec_init: Literal["mean", "zeros"] = Field("mean", json_schema_extra={"added_later": True})
    """Decoder bias at step 0: the mean of the first ``b_dec_init_batches`` batches, or zeros."""
    b_dec_init_batches: int = Field(8, ge=1, json_schema_extra={"added_later": True})
    """Batches averaged for ``b_dec_init="mean"`` (and for the ``expected_norm`` scale)."""
    apply_b_dec_to_input: bool = Field(True, json_schema_extra={"added_later": True})
    """The encoder reads ``x - b_dec`` (SAELens default)."""
    aux_k_coef: float = Field(0.0, ge=0)
    """AuxK loss coefficient on dead latents (0 = off, the paper's setting; Gao et al. use 1/32)."""
    dead_window: int = Field(200, ge=1)
    """A latent that has not fired for this many steps is dead (AuxK and the dead count)."""
    resample_every: int | None = Field(None, ge=1, json_schema_extra={"added_later": True})
    """Every this many steps, reinitialise the dead latents towards badly reconstructed recent tokens
    (:mod:`stitchplug.sae.resample`, Bricken et al. 2023 adapted to TopK; off by default). The pool is
    scored again with a dense forward whose FLOPs are charged. One process only."""
    resample_pool: int = Field(8, ge=1, json_schema_extra={"added_later": True})
    """Recent training batches the resampling draws from."""
    lr_width_ref: int | None = Field(None, ge=1)
    """If set, the lr used is ``lr * sqrt(lr_width_ref / width)`` (Gao et al.'s 1/sqrt(width) scaling)."""
    normalize: Literal["none", "expected_norm"] = "none"
    """``expected_norm``: train on ``x * s`` with ``s = sqrt(d_in) / mean ||x||``; undone on save."""
    clip_grad_norm: float | None = Field(None, gt=0, json_schema_extra={"added_later": True})
    """Clip the gradient norm to this value (off by default)."""
    decode: Literal["dense", "sparse"] = Field("dense", json_schema_extra={"added_later": True})
    """``sparse``: steps touch only the k selected latents (:meth:`TopKSAE.forward_sparse`; the same
    loss and gradients, faster at large widths); FLOPs are still charged as the dense step's."""
    warm_start: Literal["fold", "fold-rank", "preserve", "rescale", "unit"] = Field("fold", json_schema_extra={"added_later": True})
    """How training starts from given weights (``init``): fold the decoder norms into the encoder, or
    fold them and rank TopK on the unfolded pre-activation (``fold-rank``), keep the rows at their
    step-0 norms, or unit rows times a fixed per-latent output scale (``rescale``; ``unit``: also unit
    encoder columns; the last four: step 0 = exactly the given SAE); see docs/flops.md."""
    allow_tf32: bool = Field(False, json_schema_extra={"added_later": True})
    """On CUDA, TF32 matmuls while the steps run (``stitchplug.api.tf32_loop``); a no-op on the CPU."""

    def effective_lr(self) -> float:
        return self.lr * math.sqrt(self.lr_width_ref / self.width) if self.lr_width_ref else self.lr
