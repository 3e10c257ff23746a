"""FLOPs ledger for the transferred-SAE-as-initialisation experiment (paper §3.1, App. D).

Activations are cached, so the cost of training is one optimisation step on a dummy batch, counted
with :class:`torch.utils.flop_counter.FlopCounterMode`, times the number of steps. FlopCounterMode
counts matrix products only (elementwise work, TopK, the Adam update and the decoder renormalisation
are free), which is the paper's accounting. The derivation of :func:`analytic_step_flops` is in
``docs/flops.md``: for the dense TopK step of :mod:`stitchplug_sae.trainer` it is exactly
``10 * B * d * M`` (``12 * B * d * M`` when the encoder reads ``x - b_dec``, the SAELens default;
plus ``6 * B * d * M`` on steps where the AuxK loss is active).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from stitchplug.errors import StageError

try:  # the shared counter (stitchplug/flops.py); keep a local copy so this module stands alone
    from stitchplug.flops import count_step_flops
except ImportError:  # pragma: no cover - only when the shared module is absent
    from torch.utils.flop_counter import FlopCounterMode

    def count_step_flops(fn: Callable[[], Any]) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return int(counter.get_total_flops())


def analytic_step_flops(batch: int, d: int, width: int, aux: bool = False,
                        apply_b_dec_to_input: bool = False) -> int:
    """Matmul FLOPs of one training step of the dense TopK SAE (see docs/flops.md).

    Forward: encoder ``x @ W_e`` (2BdM) and dense decoder ``z @ W_d`` (2BdM). Backward: ``dW_d = z^T g``
    (2BdM), ``dz = g W_d^T`` (2BdM), ``dW_e = x^T dpre`` (2BdM); ``dx`` is not needed: 10BdM. When the
    encoder reads ``x - b_dec``, ``db_dec`` also needs ``dpre W_e^T`` (+2BdM): 12BdM. AuxK adds a
    second dense decode of the dead latents (2BdM forward, 4BdM backward): +6BdM.
    """
    per = 10 + (2 if apply_b_dec_to_input else 0) + (6 if aux else 0)
    return per * int(batch) * int(d) * int(width)


def measure_step_flops(d: int, width: int, k: int, batch: int, aux: bool = False,
                       apply_b_dec_to_input: bool = False) -> int:
    """FlopCounterMode count of one forward+backward+Adam step of a fresh dummy SAE of this shape.

    With ``aux=True`` every latent is marked dead so the AuxK branch runs (its cost does not depend
    on how many latents are dead, because the decode is dense).
    """
    from .trainer import TopKSAE, sae_step  # local import: init_experiment imports us

    gen = torch.Generator().manual_seed(0)
    sae = TopKSAE.random(d, width, k, generator=gen, apply_b_dec_to_input=apply_b_dec_to_input)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(batch, d, generator=gen)
    dead = torch.ones(width, dtype=torch.bool) if aux else None
    return count_step_flops(lambda: sae_step(sae, opt, x, dead_mask=dead, aux_coef=1.0 if aux else 0.0))


def stitch_step_flops(d_source: int, d_target: int, batch: int) -> int:
    """FlopCounterMode count of one Adam step of the paper's Eq. 3 stitch loss (a fallback estimate
    for stitches whose sidecar records no FLOPs, and for the synthetic stand-in)."""
    gen = torch.Generator().manual_seed(0)
    P_up = torch.randn(d_source, d_target, generator=gen).requires_grad_()
    P_down = torch.randn(d_target, d_source, generator=gen).requires_grad_()
    b_up = torch.zeros(d_target, requires_grad=True)
    b_down = torch.zeros(d_source, requires_grad=True)
    opt = torch.optim.Adam([P_up, P_down, b_up, b_down], lr=1e-4)
    hA = torch.randn(batch, d_source, generator=gen)
    hB = torch.randn(batch, d_target, generator=gen)

    def step() -> None:
        up_a, down_b = hA @ P_up + b_up, hB @ P_down + b_down
        loss = ((up_a - hB).pow(2).mean() + (down_b - hA).pow(2).mean()
                + ((up_a @ P_down + b_down) - hA).pow(2).mean() + ((down_b @ P_up + b_up) - hB).pow(2).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()

    return count_step_flops(step)


def _sidecar(path: Path) -> Path:
    for cand in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if cand.exists():
            return cand
    raise StageError(f"stitch {path} has no JSON sidecar ({path.name}.json)")


def read_stitch_sidecar(stitch_path: str | Path) -> dict:
    """The JSON sidecar next to a stitch's safetensors file (``<file>.json``)."""
    side = _sidecar(Path(stitch_path))
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise StageError(f"stitch sidecar {side} is not valid JSON: {exc}") from None


def read_stitch_flops(stitch_path: str | Path) -> int:
    """The ``flops`` field of a stitch's sidecar: what fitting the stitch cost."""
    meta = read_stitch_sidecar(stitch_path)
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
    history: list[int] = field(default_factory=list)

    def pay_step(self, aux_active: bool = False) -> int:
        """Charge one training step; return the cumulative FLOPs after it."""
        self.steps += 1
        if aux_active:
            self.aux_steps += 1
        return self.total

    @property
    def sae_flops(self) -> int:
        return self.steps * self.step_flops + self.aux_steps * (self.aux_step_flops - self.step_flops)

    @property
    def total(self) -> int:
        return self.offset + self.sae_flops

    def summary(self, source_sae_flops: int | None = None) -> dict:
        out = {"offset_flops": self.offset, "sae_step_flops": self.step_flops, "steps": self.steps,
               "aux_steps": self.aux_steps, "sae_flops": self.sae_flops, "total_flops": self.total}
        if self.offset and source_sae_flops is not None:
            out["total_incl_source_sae"] = self.total + int(source_sae_flops)
        return out
