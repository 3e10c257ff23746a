"""FLOPs ledger of the init experiment's two arms (paper §3.1, App. D): what each arm has paid.

The per-step SAE cost comes from :mod:`stitchplug.sae.step_flops` (the core FLOP counter on one step
of the one trainer); the stitch arm's offset is what fitting the stitch cost, read from the stitch's
metadata through :meth:`stitchplug.api.Stitch.load` (the core counts it when it fits the stitch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stitchplug.api import StageError, Stitch


def read_stitch_meta(stitch_path: str | Path) -> dict:
    """The metadata of a saved stitch (:meth:`Stitch.load`, which also checks the file)."""
    return dict(Stitch.load(stitch_path).meta)


def read_stitch_flops(stitch_path: str | Path, meta: dict | None = None) -> int:
    """The ``flops`` field of a stitch's metadata: what fitting the stitch cost."""
    meta = read_stitch_meta(stitch_path) if meta is None else meta
    flops = meta.get("flops")
    if isinstance(flops, dict):  # tolerate {"total": ...}
        flops = flops.get("total")
    if not isinstance(flops, (int, float)) or flops < 0:
        raise StageError(f"stitch sidecar for {stitch_path} records no 'flops' (got {flops!r}); "
                         "refit the stitch or pass --stitch-flops")
    return int(flops)


@dataclass
class ArmLedger:
    """FLOPs paid by one arm: a fixed offset (the stitch) plus per-step SAE costs."""

    step_flops: int
    aux_step_flops: int = 0
    offset: int = 0
    steps: int = 0
    aux_steps: int = 0
    extra_flops: int = 0
    history: list[int] = field(default_factory=list)

    def pay_step(self, aux_active: bool = False, extra: int = 0) -> int:
        """Charge one training step (plus ``extra`` FLOPs spent beside it, e.g. scoring the pool
        when dead latents are resampled); return the cumulative FLOPs after it."""
        self.steps += 1
        if aux_active:
            self.aux_steps += 1
        self.extra_flops += int(extra)
        return self.total

    @property
    def sae_flops(self) -> int:
        return (self.steps * self.step_flops + self.aux_steps * (self.aux_step_flops - self.step_flops)
                + self.extra_flops)

    @property
    def total(self) -> int:
        return self.offset + self.sae_flops

    def summary(self, source_sae_flops: int | None = None) -> dict:
        out = {"offset_flops": self.offset, "sae_step_flops": self.step_flops, "steps": self.steps,
               "aux_steps": self.aux_steps, "extra_flops": self.extra_flops, "sae_flops": self.sae_flops, "total_flops": self.total}
        if self.offset and source_sae_flops is not None:
            out["total_incl_source_sae"] = self.total + int(source_sae_flops)
        return out
