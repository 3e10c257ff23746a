"""Next-token loss with a reconstruction spliced into the residual stream (Delta loss, CE recovered).

Definitions follow ``sae_lens.evals.get_recons_loss`` / ``get_downstream_reconstruction_metrics``
(sae-lens 6.54): the SAE's reconstruction replaces the residual at the hook at every position whose
token is not special; the zero-ablation baseline replaces it with zeros at *every* position;
per-token losses are averaged over positions whose *input* token is not special (and, here, not
padding). ``ce_loss_score = (CE_zero_abl - CE_sae) / (CE_zero_abl - CE_clean)``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from stitchplug.api import StageError

Recon = Callable[[torch.Tensor], torch.Tensor]
"""``x [n, d] -> x_hat [n, d]``: what gets spliced in."""


def window_batches(windows: Sequence[torch.Tensor] | torch.Tensor, batch_size: int, pad_id: int = 0):
    """Yield ``(ids [b, T], valid [b, T])``: windows right-padded to the batch's longest one."""
    if isinstance(windows, torch.Tensor):
        if windows.dim() == 1:
            windows = windows[None]
        windows = list(windows)
    if len(windows) == 0:
        raise StageError("no held-out token windows to compute losses on")
    for i in range(0, len(windows), batch_size):
        chunk = [torch.as_tensor(w).long().reshape(-1) for w in windows[i:i + batch_size]]
        T = max(len(w) for w in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        valid = torch.zeros((len(chunk), T), dtype=torch.bool)
        for j, w in enumerate(chunk):
            ids[j, :len(w)] = w
            valid[j, :len(w)] = True
        yield ids, valid


def _special_mask(ids: torch.Tensor, special: frozenset[int] | set[int]) -> torch.Tensor:
    if not special:
        return torch.zeros_like(ids, dtype=torch.bool)
    return torch.isin(ids, torch.tensor(sorted(special), dtype=ids.dtype))


def splice_patch(recon: Recon, replace: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``resid -> resid`` patch putting ``recon(resid)`` where ``replace [b, T]`` is true."""

    def patch(resid: torch.Tensor) -> torch.Tensor:
        m = replace.to(resid.device)
        x_hat = recon(resid[m]).to(resid.dtype)
        out = resid.clone()
        out[m] = x_hat
        return out

    return patch


def zero_patch(resid: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(resid)


@torch.no_grad()
def spliced_losses(adapter: Any, layer: int, windows: Sequence[torch.Tensor] | torch.Tensor,
                   recon: Recon | None = None, *, clean: bool = True, zero_ablation: bool = False,
                   batch_size: int = 8) -> dict[str, float]:
    """Mean next-token CE (nats/token) clean, with ``recon`` spliced in at ``layer``, and zero-ablated.

    Keys returned: ``ce_clean`` (if ``clean``), ``ce_spliced`` (if ``recon``), ``ce_zero_ablation``
    (if ``zero_ablation``), ``n_tokens`` (positions averaged over).
    """
    adapter.check_layer(layer)
    special = adapter.special_ids
    sums = {"ce_clean": 0.0, "ce_spliced": 0.0, "ce_zero_ablation": 0.0}
    n = 0
    for ids, valid in window_batches(windows, batch_size):
        spec = _special_mask(ids, special)
        # loss at t predicts t+1: count it when token t is a real non-special token and t+1 exists
        keep = (valid & ~spec)[:, :-1] & valid[:, 1:]
        k = int(keep.sum())
        if k == 0:
            continue
        n += k
        runs = {}
        if clean:
            runs["ce_clean"] = None
        if recon is not None:
            runs["ce_spliced"] = {layer: splice_patch(recon, valid & ~spec)}
        if zero_ablation:
            runs["ce_zero_ablation"] = {layer: zero_patch}
        for key, losses in adapter.token_losses_many(ids, runs).items():
            sums[key] += float(losses.float().cpu()[keep].double().sum())
    if n == 0:
        raise StageError("the held-out windows have no non-special token positions to score")
    out: dict[str, float] = {"n_tokens": n}
    if clean:
        out["ce_clean"] = sums["ce_clean"] / n
    if recon is not None:
        out["ce_spliced"] = sums["ce_spliced"] / n
    if zero_ablation:
        out["ce_zero_ablation"] = sums["ce_zero_ablation"] / n
    return out


def ce_loss_score(ce_clean: float, ce_spliced: float, ce_zero: float) -> float:
    """SAELens's CE-loss-recovered score ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``
    (``sae_lens.evals.get_downstream_reconstruction_metrics``, key ``ce_loss_score``)."""
    denom = ce_zero - ce_clean
    return float("nan") if denom == 0 else (ce_zero - ce_spliced) / denom
