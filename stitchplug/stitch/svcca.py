"""SVCCA layer choice (paper §2): lB = argmax over B's layers of mean SVCCA correlation with A at lA.

SVCCA (Raghu et al., 2017): centre each representation, keep the top singular directions explaining
``var_explained`` of the variance (at most ``max_dims``), then the canonical correlations between
the two reduced subspaces are the singular values of ``U_x^T U_y`` (both orthonormal bases of the
token space). The score is their mean.

Deviation (default ``standardize=True``): each dimension is z-scored before the SVD. Llama/Gemma
residual streams carry a few massive dimensions; without this, 99% of a layer's variance can sit in
a handful of directions (Gemma-3-270M resid_pre 1: 10 directions), the mean is taken over 10
correlations instead of 64 and that layer wins spuriously (measured on the default pair: raw SVCCA
picks Gemma layer 1 with 0.77; z-scored SVCCA picks layer 9, the same relative depth as SmolLM2 15/30). Keep ``max_dims`` well below the number of tokens: CCA on
few tokens overfits (independent data scores about ``sqrt(max_dims / n_tokens)``).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ..config import SVCCA_TOKENS


def _reduced_basis(x: torch.Tensor, var_explained: float, max_dims: int, standardize: bool) -> torch.Tensor:
    x = x.to(torch.float64)
    x = x - x.mean(0)
    if standardize:
        std = x.std(0)
        x = x / torch.where(std > 1e-12, std, torch.ones_like(std))
    # top singular directions from the d x d Gram matrix (eigh), not an SVD of the N x d matrix:
    # same subspace, several times faster for N >> d (the probe runs this once per layer)
    var, V = torch.linalg.eigh(x.T @ x)
    var, V = var.flip(0).clamp_min(0), V.flip(1)
    total = var.sum()
    if total <= 0:
        raise ValueError("SVCCA: representation is constant")
    k = int(torch.searchsorted(torch.cumsum(var, 0) / total, torch.tensor(var_explained, dtype=var.dtype))) + 1
    k = max(1, min(k, max_dims, int((var > var[0] * 1e-12).sum())))
    U = x @ V[:, :k] / var[:k].sqrt()
    return torch.linalg.qr(U).Q  # re-orthonormalise (the Gram route loses a little orthogonality)


def svcca(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, var_explained: float = 0.99,
          max_dims: int = 64, standardize: bool = True) -> dict:
    """Mean SVCCA correlation of ``x [N, d1]`` and ``y [N, d2]`` (rows are the same tokens).

    Returns ``{"mean": float, "corrs": list, "dims": (kx, ky)}``.
    """
    x, y = torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(y))
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"SVCCA needs the same tokens on both sides ({x.shape[0]} vs {y.shape[0]} rows)")
    return _svcca_bases(_reduced_basis(x, var_explained, max_dims, standardize),
                        _reduced_basis(y, var_explained, max_dims, standardize))


def _svcca_bases(ux: torch.Tensor, uy: torch.Tensor) -> dict:
    corrs = torch.linalg.svdvals(ux.T @ uy).clamp(0, 1)
    return {"mean": float(corrs.mean()), "corrs": corrs.tolist(), "dims": (ux.shape[1], uy.shape[1])}


def choose_layer(x_source: torch.Tensor | np.ndarray, targets: Mapping[int, torch.Tensor | np.ndarray],
                 var_explained: float = 0.99, max_dims: int = 64) -> tuple[int, dict[int, float]]:
    """Best target layer for A's activations ``x_source`` and the profile ``{layer: mean SVCCA}``."""
    if not targets:
        raise ValueError("no candidate target layers")
    ux = _reduced_basis(torch.as_tensor(np.asarray(x_source)), var_explained, max_dims, True)  # once, not per layer
    profile = {}
    for l, y in sorted(targets.items()):
        if np.asarray(y).shape[0] != ux.shape[0]:
            raise ValueError(f"SVCCA needs the same tokens on both sides ({ux.shape[0]} vs {np.asarray(y).shape[0]} rows)")
        uy = _reduced_basis(torch.as_tensor(np.asarray(y)), var_explained, max_dims, True)
        profile[int(l)] = _svcca_bases(ux, uy)["mean"]
    best = max(profile, key=profile.get)
    return best, profile


def choose_layer_from_cache(cache, source_layer: int, n_tokens: int = SVCCA_TOKENS, split: str = "train",
                            layers: list[int] | None = None, var_explained: float = 0.99,
                            max_dims: int = 64) -> tuple[int, dict[int, float]]:
    """:func:`choose_layer` on ``n_tokens`` positions of a paired cache (the first rows of ``split``)."""
    from ..errors import StageError

    if source_layer not in list(cache.source_layers):
        raise StageError(f"source layer {source_layer} is not in the cache (cached: {list(cache.source_layers)})")
    layers = list(cache.target_layers) if layers is None else layers
    missing = [l for l in layers if l not in list(cache.target_layers)]
    if missing:
        raise StageError(f"target layers {missing} are not in the cache (cached: {list(cache.target_layers)})")
    keys = [("source", source_layer)] + [("target", l) for l in layers]
    # the first n_tokens rows of the split, read once for all layers (contiguous documents)
    batch = next(iter(cache.batches(keys=keys, batch_size=n_tokens, split=split, shuffle=False,
                                    chunk_rows=n_tokens, buffer_chunks=1)), None)
    if batch is None:
        raise StageError(f"the cache's {split} split is empty")
    x, ys = batch[0], batch[1:]
    return choose_layer(x, dict(zip(layers, ys)), var_explained, max_dims)
