"""Entropy features: decoder rows that live in the unembedding's effective null space (paper §5).

``null_share(rows, W_eff)`` is, for each decoder row ``d``, the share of its squared norm in the span
of the bottom ``fraction`` (default 2%) left singular vectors of the folded unembedding ``W_eff``
(:func:`stitchplug_analysis.common.unembed_path`): ``|U_low^T d|^2 / |d|^2``. A row entirely in that
subspace barely moves any logit directly but, scaled up, changes the final norm's scale and so the
output entropy. The ablation effect is measured on held-out windows: the latent's contribution
``f_i(t) d_i`` is subtracted from the residual at the SAE's layer wherever it fires, and the mean
next-token entropy over those positions is compared with the clean run (``delta_entropy`` =
ablated - clean, nats).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .common import Capture, _tl_model, decoder_rows, live_codes


@torch.no_grad()
def null_basis(W_eff: torch.Tensor, fraction: float = 0.02) -> torch.Tensor:
    """Orthonormal basis ``[d, k]`` of the bottom ``ceil(fraction * d)`` left singular directions."""
    d = W_eff.shape[0]
    k = max(1, math.ceil(fraction * d))
    gram = torch.zeros(d, d, dtype=torch.float64)  # W W^T: its eigenvectors are the left singular vectors
    for i in range(0, W_eff.shape[1], 16384):  # chunks: a 262k vocabulary in float64 would be 1.3 GB
        c = W_eff[:, i:i + 16384].double()
        gram += c @ c.T
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    return evecs[:, :k].float()


@torch.no_grad()
def null_share(rows: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Share of each row's squared norm inside ``basis``'s span: ``[m]`` in [0, 1]."""
    proj = rows.double() @ basis.double()
    return (proj.pow(2).sum(-1) / rows.double().pow(2).sum(-1).clamp_min(1e-30)).float()


@torch.no_grad()
def activation_stats(sae: Any, caps: Sequence[Capture]) -> dict[str, np.ndarray]:
    """Per-latent firing frequency, mean activation when firing and max activation on held-out
    non-special positions."""
    fire = total = mx = None
    n = 0
    for cap in caps:
        f = live_codes(sae, cap)[~cap.special]
        fr, tot, m = (f != 0).sum(0).double(), f.sum(0).double(), f.max(0).values.double()
        fire = fr if fire is None else fire + fr
        total = tot if total is None else total + tot
        mx = m if mx is None else torch.maximum(mx, m)
        n += f.shape[0]
    fire_n = fire.numpy()
    return {"frequency": fire_n / max(n, 1), "mean_when_active": (total / fire.clamp_min(1)).numpy(),
            "max": mx.numpy(), "n_tokens": n}


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def ablation_entropy(adapter: Any, sae: Any, layer: int, caps: Sequence[Capture], latents: Sequence[int],
                     chunk: int = 4) -> dict[int, dict]:
    """For each latent: mean output entropy over the positions where it fires, clean and with its
    contribution subtracted at ``layer`` (all other positions untouched). The model runs from the
    captured residual at ``layer`` on (``start_at_layer``), ``chunk`` ablations per batch."""
    model = _tl_model(adapter)
    rows = decoder_rows(sae)
    sums = {i: [0.0, 0.0, 0] for i in latents}
    for cap in caps:
        f = live_codes(sae, cap)
        x = cap.resid[None].to(adapter.device)
        clean = _entropy(model(x, start_at_layer=layer)[0]).cpu()
        todo = [i for i in latents if bool((f[:, i] != 0).any())]
        for k in range(0, len(todo), chunk):
            part = todo[k:k + chunk]
            idx = torch.as_tensor(part)
            delta = f[:, idx].T[:, :, None] * rows[idx][:, None, :]  # [n, T, d]
            abl = _entropy(model(x - delta.to(x), start_at_layer=layer)).cpu()  # [n, T]
            for j, i in enumerate(part):
                where = f[:, i] != 0
                s = sums[i]
                s[0] += float(clean[where].sum())
                s[1] += float(abl[j][where].sum())
                s[2] += int(where.sum())
    out = {}
    for i, (c, a, n) in sums.items():
        out[i] = {"n_positions": n, "entropy_clean": c / n if n else None, "entropy_ablated": a / n if n else None,
                  "delta_entropy": (a - c) / n if n else None}
    return out


def entropy_features(sae: Any, adapter: Any, layer: int, caps: Sequence[Capture], W_eff: torch.Tensor,
                     top: int = 8, fraction: float = 0.02, latents: Sequence[int] | None = None,
                     ablate: bool = True, basis: torch.Tensor | None = None) -> dict:
    """Null-space share of every decoder row, and the ``top`` live latents by share (or the given
    ``latents``) with activation statistics and ablation effect on output entropy. ``basis``:
    a precomputed :func:`null_basis` of ``W_eff``."""
    basis = null_basis(W_eff, fraction) if basis is None else basis
    share = null_share(decoder_rows(sae), basis).numpy()
    stats = activation_stats(sae, caps)
    live = stats["frequency"] > 0
    if latents is None:
        order = np.argsort(-np.where(live, share, -1.0))
        latents = [int(i) for i in order[:top] if live[i]]
    effects = ablation_entropy(adapter, sae, layer, caps, latents) if ablate else {}
    rows = []
    for i in latents:
        row = {"latent": int(i), "null_share": float(share[i]), "frequency": float(stats["frequency"][i]),
               "mean_when_active": float(stats["mean_when_active"][i]), "max": float(stats["max"][i])}
        row.update(effects.get(i, {}))
        rows.append(row)
    return {"null_dims": int(basis.shape[1]), "fraction": fraction, "n_live": int(live.sum()),
            "null_share": [float(v) for v in share], "null_share_mean_live": float(share[live].mean()) if live.any() else None,
            "top": rows}
