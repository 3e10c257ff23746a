"""Held-out reconstruction metrics of a stitch: up, down and both round trips.

Massive-activation dimensions are detected on each side from the first ``detect_tokens`` held-out
tokens (:func:`stitchplug.metrics.massive_dims`) and reported, and every map gets FVU over all
dimensions, excluding the massive ones, and averaged per dimension (see :mod:`stitchplug.metrics`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..metrics import ReconAccumulator, massive_dims
from .data import BatchSource, take_tokens
from .model import Stitch


@torch.no_grad()
def eval_loss(stitch: Stitch, source: BatchSource, alpha: float = 1.0) -> dict[str, float]:
    """Eq. 3 loss and its parts averaged over every token of ``source`` (computed in float64)."""
    sums: dict[str, float] = {}
    n = 0
    for hA, hB in source():
        k = int(hA.shape[0])
        _, parts = stitch.loss(hA.double(), hB.double(), alpha)
        for key, v in parts.items():
            sums[key] = sums.get(key, 0.0) + v * k
        n += k
    if n == 0:
        raise ValueError("empty evaluation source")
    out = {k: v / n for k, v in sums.items()}
    out["n_tokens"] = n
    return out


@torch.no_grad()
def evaluate_recon(stitch: Stitch, source: BatchSource, alpha: float = 1.0, detect_tokens: int = 8192) -> dict[str, Any]:
    """MSE / FVU / cos of up (A->B vs B), down (B->A vs A), aba (A->B->A vs A), bab (B->A->B vs B)."""
    sample_a, sample_b = take_tokens(source, detect_tokens)
    massive = {"source": massive_dims(sample_a), "target": massive_dims(sample_b)}
    acc = {
        "up": ReconAccumulator(stitch.d_target, massive["target"]),
        "down": ReconAccumulator(stitch.d_source, massive["source"]),
        "aba": ReconAccumulator(stitch.d_source, massive["source"]),
        "bab": ReconAccumulator(stitch.d_target, massive["target"]),
    }
    sums: dict[str, float] = {}
    n = 0
    for hA, hB in source():
        hA, hB = hA.double(), hB.double()
        up_a, down_b = stitch.up(hA), stitch.down(hB)
        acc["up"].update(hB, up_a)
        acc["down"].update(hA, down_b)
        acc["aba"].update(hA, stitch.down(up_a))
        acc["bab"].update(hB, stitch.up(down_b))
        _, parts = stitch.loss(hA, hB, alpha)
        k = int(hA.shape[0])
        for key, v in parts.items():
            sums[key] = sums.get(key, 0.0) + v * k
        n += k
    out: dict[str, Any] = {name: a.result() for name, a in acc.items()}
    for name, a in acc.items():
        var = (a.sumsq - a.sum.pow(2) / max(a.n, 1)).clamp_min(1e-12)
        out[name]["fvu_per_dim_max"] = float((a.err / var).max())
    out["loss"] = {k: v / max(n, 1) for k, v in sums.items()}
    out["massive_dims"] = massive
    out["n_tokens"] = n
    return out
