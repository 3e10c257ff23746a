"""Reconstruction metrics shared by the stitch and artifact evaluators.

Residual streams of Llama- and Gemma-family models carry a few "massive activation" dimensions
that dominate total variance, so every reconstruction metric is also reported with those
dimensions excluded and averaged per dimension.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


def massive_dims(x: torch.Tensor, factor: float = 20.0, max_dims: int = 8) -> list[int]:
    """Dimensions whose RMS is more than ``factor`` times the median dimension's RMS.

    ``x`` is ``[N, d]``. At most ``max_dims`` are returned, largest first.
    """
    rms = x.double().pow(2).mean(0).sqrt()
    med = rms.median().clamp_min(1e-12)
    order = torch.argsort(rms, descending=True)
    return [int(i) for i in order[:max_dims] if rms[i] > factor * med]


class ReconAccumulator:
    """Streams ``(x, x_hat)`` batches and reports MSE, FVU (all, excluding massive dims, per-dim mean)
    and mean cosine similarity, all in float64 so millions of tokens do not lose precision."""

    def __init__(self, d: int, exclude: Sequence[int] = ()):
        self.d = d
        self.exclude = sorted(set(int(i) for i in exclude))
        self.n = 0
        self.sum = torch.zeros(d, dtype=torch.float64)
        self.sumsq = torch.zeros(d, dtype=torch.float64)
        self.err = torch.zeros(d, dtype=torch.float64)
        self.cos = 0.0

    def update(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        x = x.detach().to(torch.float64).cpu()
        x_hat = x_hat.detach().to(torch.float64).cpu()
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.sumsq += x.pow(2).sum(0)
        self.err += (x - x_hat).pow(2).sum(0)
        self.cos += torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).sum().item()

    def result(self) -> dict:
        n = max(self.n, 1)
        var = (self.sumsq - self.sum.pow(2) / n).clamp_min(1e-12)  # per-dim total squared deviation
        keep = torch.ones(self.d, dtype=torch.bool)
        if self.exclude:
            keep[self.exclude] = False
        return {
            "n_tokens": self.n,
            "mse": (self.err.sum() / (n * self.d)).item(),
            "fvu": (self.err.sum() / var.sum()).item(),
            "fvu_excl_massive": (self.err[keep].sum() / var[keep].sum()).item(),
            "fvu_per_dim": (self.err / var).mean().item(),
            "cos": self.cos / n,
            "massive_dims": self.exclude,
        }


def recon_metrics(x: torch.Tensor, x_hat: torch.Tensor, exclude: Iterable[int] = ()) -> dict:
    """One-shot version of :class:`ReconAccumulator` for tensors already in memory."""
    acc = ReconAccumulator(x.shape[-1], list(exclude))
    acc.update(x.reshape(-1, x.shape[-1]), x_hat.reshape(-1, x.shape[-1]))
    return acc.result()
