"""Interventions on the residual stream: the paper's projection clamp and an additive variant.

A patch is ``resid [batch, pos, d] -> resid`` for :meth:`stitchplug.adapter.ModelAdapter.generate`
(applied at the layer's ``resid_pre`` hook on every forward pass, so on the prompt's positions and on
each generated token as it enters).
"""

from __future__ import annotations

from typing import Callable

import torch

Patch = Callable[[torch.Tensor], torch.Tensor]


def clamp_patch(v: torch.Tensor, z: float) -> Patch:
    """``h' = h + (z - <h, v>) v`` at every position, so ``<h', v> = z`` (``v`` unit)."""
    v64 = v.double()

    def patch(resid: torch.Tensor) -> torch.Tensor:
        u = v64.to(resid.device)
        h = resid.double()
        return (h + (z - h @ u)[..., None] * u).to(resid.dtype)

    return patch


def add_patch(v: torch.Tensor, alpha: float) -> Patch:
    """``h' = h + alpha v`` at every position."""

    def patch(resid: torch.Tensor) -> torch.Tensor:
        return resid + alpha * v.to(resid.device, resid.dtype)

    return patch


def make_patch(kind: str, v: torch.Tensor, z: float, z_en: float) -> Patch:
    """``clamp`` at ``z``, or ``add`` the offset ``(z - z_en) v`` (moves the English mean to ``z``)."""
    if kind == "clamp":
        return clamp_patch(v, z)
    if kind == "add":
        return add_patch(v, z - z_en)
    raise ValueError(f"unknown intervention {kind!r} (clamp, add)")
