"""One streaming pass of an SAE over held-out activations: reconstruction, L0, latent frequencies.

Works for any artifact with ``encode(x) -> codes [n, m]`` and ``decode(codes) -> x_hat [n, d]`` (every
``sae_lens.SAE``). Reconstruction metrics come from :class:`stitchplug.metrics.ReconAccumulator`.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from stitchplug.api import StageError
from stitchplug.api import ReconAccumulator


@torch.no_grad()
def sae_activation_stats(sae: Any, batches: Iterable[torch.Tensor], exclude: Sequence[int] = (),
                         device: str | None = None) -> dict:
    """Stream ``batches`` (``[n, d]`` or ``[b, t, d]``) through ``sae``.

    Returns ``recon`` (mse, fvu, fvu_excl_massive, fvu_per_dim, cos, n_tokens, massive_dims),
    ``l0`` (mean active latents per token), ``fire_count`` (LongTensor [m]: tokens on which each latent
    was non-zero), ``n_tokens``.
    """
    acc: ReconAccumulator | None = None
    fire = None
    l0_sum = 0.0
    n = 0
    dev = device or str(getattr(sae, "device", "cpu"))
    dtype = getattr(sae, "dtype", torch.float32)
    for x in batches:
        x = torch.as_tensor(x)
        x = x.reshape(-1, x.shape[-1])
        if acc is None:
            acc = ReconAccumulator(x.shape[-1], list(exclude))
        codes = sae.encode(x.to(dev, dtype))
        x_hat = sae.decode(codes)
        active = codes != 0
        fire = active.sum(0).cpu() if fire is None else fire + active.sum(0).cpu()
        l0_sum += float(active.sum())
        n += x.shape[0]
        acc.update(x, x_hat)
    if acc is None or n == 0:
        raise StageError("no held-out activations to evaluate the SAE on")
    return {"recon": acc.result(), "l0": l0_sum / n, "fire_count": fire.long(), "n_tokens": n}


def cached_stats(sae: Any, context: Any) -> dict:
    """:func:`sae_activation_stats` on ``context.eval_activations()``, computed once per (sae, context)
    and kept in ``context.memo`` so several evaluators share one pass."""
    context.need("eval_activations", who="SAE evaluation")
    store = context.memo.setdefault("_sae_stats", [])
    for obj, stats in store:
        if obj is sae:
            return stats
    stats = sae_activation_stats(sae, context.eval_activations(), context.massive_dims, context.device)
    store.append((sae, stats))
    return stats
