"""Synthetic stand-in for the init experiment (tests and ``bench/flops.py`` when no run folder exists).

Activations are sparse combinations of a known dictionary plus noise and a constant offset; the
"transferred" initialisation is that dictionary degraded like a real transfer: projected to rank
``rank`` (transferred SAEs have rank <= dA), with non-unit row norms and added noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch


@dataclass
class SyntheticActs:
    train: torch.Tensor   # [N, d]
    eval: torch.Tensor    # [N_eval, d]
    dictionary: torch.Tensor  # [n_latents, d], unit rows
    offset: torch.Tensor  # [d]

    def batches(self, batch_size: int, seed: int = 0, epochs: int = 1) -> Callable[[], Iterator[torch.Tensor]]:
        """A factory of identical shuffled iterators (what both arms of the experiment need)."""

        def factory() -> Iterator[torch.Tensor]:
            gen = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                order = torch.randperm(self.train.shape[0], generator=gen)
                for i in range(0, len(order) - batch_size + 1, batch_size):
                    yield self.train[order[i:i + batch_size]]

        return factory


def make_synthetic(d: int = 32, n_latents: int = 128, k: int = 4, n_train: int = 20_000, n_eval: int = 2_000,
                   noise: float = 0.05, offset_scale: float = 3.0, seed: int = 0) -> SyntheticActs:
    """Rows ``x = z @ D + offset + noise`` with ``k`` active latents per row (exponential magnitudes)."""
    gen = torch.Generator().manual_seed(seed)
    D = torch.randn(n_latents, d, generator=gen)
    D = D / D.norm(dim=1, keepdim=True)
    offset = torch.randn(d, generator=gen) * offset_scale

    def sample(n: int) -> torch.Tensor:
        idx = torch.rand(n, n_latents, generator=gen).topk(k, dim=1).indices
        mag = torch.empty(n, k).exponential_(1.0, generator=gen) + 0.5
        z = torch.zeros(n, n_latents).scatter(1, idx, mag)
        return z @ D + offset + noise * torch.randn(n, d, generator=gen)

    return SyntheticActs(sample(n_train), sample(n_eval), D, offset)


def transferred_init(data: SyntheticActs, k: int, rank: int | None = None, noise: float = 0.0,
                     seed: int = 0) -> dict:
    """SAE weights built from the generating dictionary, degraded like a stitch transfer.

    ``rank`` projects the decoder onto the top-``rank`` principal subspace of the data; decoder rows
    get random norms in [0.5, 2] (transferred rows are not unit norm) and Gaussian noise.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    D = data.dictionary.clone()
    if rank is not None and rank < D.shape[1]:
        centred = data.train[:5000] - data.train[:5000].mean(0)
        V = torch.linalg.svd(centred, full_matrices=False).Vh[:rank]
        D = D @ V.T @ V
    D = D + noise * torch.randn(D.shape, generator=gen) / D.shape[1] ** 0.5
    unit = D / D.norm(dim=1, keepdim=True).clamp_min(1e-12)
    scale = 0.5 + 1.5 * torch.rand(D.shape[0], generator=gen)
    W_dec = unit * scale[:, None]
    W_enc = unit.T / scale[None, :]
    b_enc = -(data.offset @ W_enc)
    return {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": data.offset.clone(), "k": k}
