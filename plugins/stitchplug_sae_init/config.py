"""The init experiment's settings and named recipes (a light module: the command builds its flags
from it without importing torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from stitchplug.api import ConfigSection, TrainerConfig

from . import scaling

_NO_REVIVAL = {"aux_k_coef": 0.0, "resample_every": None, "dead_window": 200}
RECIPES: dict[str, dict] = {
    "paper": {"k": 64, "lr": 1e-4, **_NO_REVIVAL, "normalize": "none", "scratch_b_dec": "zeros"},
    "tuned": {"k": 32, "lr": 4e-4, **_NO_REVIVAL, "normalize": "none", "scratch_b_dec": "mean"},
}
"""Named recipes (docs/flops.md). ``paper``: method.md section 3 (TopK k 64, constant lr 1e-4, no AuxK,
unnormalised activations, SAELens's zero decoder bias for scratch, dense-decode FLOPs accounting);
``tuned``: the project's own (k 32, lr 4e-4, scratch ``b_dec`` = the data mean; docs/sae.md). Both
charge the dense step's FLOPs, and neither revives dead latents (no AuxK, no resampling), so a run
that does is labelled ``<recipe> + resample_every=...``. ``k`` applies where an SAE is trained from scratch on A (the sweep);
the init experiment takes ``k`` from the transferred SAE."""

_SAE = TrainerConfig.model_fields  # the one SAE config: the trainer's fields, defaults and help


class InitExperimentConfig(ConfigSection):
    """Settings of the init experiment (both arms share all of them). The SAE training fields (``lr``,
    ``batch_size``, ``aux_k_coef``, ``dead_window``, ``apply_b_dec_to_input``) are the trainer's own
    (:class:`stitchplug.api.TrainerConfig`): same names, defaults and help."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=False)

    steps: int = Field(2000, ge=1)
    """Training steps per arm (fewer if the data iterator runs out; both arms then stop together)."""
    batch_size: int = _SAE["batch_size"]
    lr: float = _SAE["lr"]
    eval_every: int = Field(50, ge=1)
    """Evaluate explained variance on the held-out activations every this many steps."""
    eval_batch: int = Field(4096, ge=1)
    """Rows per chunk when evaluating."""
    ma_window: int = Field(5, ge=1)
    """Moving-average window (in evaluation points) for the threshold crossings."""
    thresholds: list[float] = list(scaling.DEFAULT_THRESHOLDS)
    """Explained-variance thresholds at which savings are reported."""
    aux_k_coef: float = _SAE["aux_k_coef"]
    dead_window: int = _SAE["dead_window"]
    resample_every: int | None = _SAE["resample_every"]
    resample_pool: int = _SAE["resample_pool"]
    apply_b_dec_to_input: bool = _SAE["apply_b_dec_to_input"]
    scratch_b_dec: Literal["zeros", "mean"] = "zeros"
    """Scratch arm decoder bias: zeros (SAELens default, the paper) or the training-data mean of the first batch."""
    seed: int = Field(0, ge=0)
    """Seed of the scratch arm's random init."""
    source_sae_flops: int | None = Field(None, ge=0)
    """FLOPs already paid for the source SAE on A (reported in a total that includes it, if known)."""
    warm_start: Literal["fold", "fold-rank", "preserve", "rescale", "unit"] = "rescale"
    """How the stitched arm starts from theta' (``fold``: decoder norms folded into the encoder;
    ``fold-rank``: folded, TopK ranking theta''s own pre-activation, step 0 = exactly theta';
    ``preserve``: rows kept at their step-0 norms, step 0 = exactly theta'; ``rescale``: unit rows
    times a fixed per-latent output scale, step 0 = exactly theta'; the default: it saved the most
    at EV 0.90 on the default pair, docs/init_results.md; ``unit``: ``rescale`` with unit encoder
    columns, their norms moved into fixed output and ranking scales, step 0 = exactly theta');
    docs/flops.md."""
    decode: Literal["dense", "sparse"] = "dense"
    """``sparse``: train with the k-row step (same loss and gradients, faster at large widths); the
    ledger still charges the dense step's FLOPs (the paper's accounting)."""
    recipe: str = "custom"
    """Name of the recipe these settings came from (``paper``, ``tuned`` or ``custom``); every table says it."""
    epochs: int | None = Field(None, ge=1)
    """Passes over the cached training tokens the data iterator was allowed (1 = single-epoch); reported."""

    @field_validator("thresholds")
    @classmethod
    def _check_thresholds(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < t < 1.0 for t in v):
            raise ValueError("thresholds must be explained-variance values strictly between 0 and 1")
        return sorted(v)
