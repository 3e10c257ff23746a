"""Resampling dead latents of a TopK SAE (an option of the one trainer, off by default).

Bricken et al. (2023, "Towards Monosemanticity", appendix "Neuron resampling") reinitialise latents
that stopped firing towards inputs the SAE reconstructs badly. This is that rule adapted to TopK,
where a latent only fires if it beats the k-th largest pre-activation of its token:

- the pool is the last few training batches (already trained on; they are scored again, not trained
  on again) run through the current SAE (a dense forward, ``4 N d M`` FLOPs, returned so the caller
  charges them);
- one pool token per dead latent is drawn without replacement with probability proportional to the
  square of its loss ``||x - x_hat||^2`` (the paper's rule);
- the latent's decoder row becomes that token's residual direction ``u`` (times the latent's fixed
  row norm): what the SAE is missing there; its encoder column becomes ``g e``, with ``e`` the token's
  own centred input ``(x - b_dec) / ||x - b_dec||`` (the paper sets both to the input direction; the
  residual can point against the input where the SAE overshoots, so it cannot always serve as the
  detector), the encoder bias reads ``x - b_dec``, and ``g`` is set so that on the drawn token the
  latent's (ranked) pre-activation is ``MARGIN`` times the token's current k-th largest one: it
  enters TopK on that token and on inputs that point further along ``e``;
- the per-latent buffers a warm start fixed (``out_scale``, ``rank_scale``, ``row_norm``) are kept,
  and Adam's moments of the touched rows, columns and biases are reset to zero.

A latent whose drawn token has no positive TopK threshold (fewer than k positive pre-activations)
is left as it is. docs/flops.md measures what it does to the init experiment.
"""

from __future__ import annotations

import torch

from .topk import TopKSAE

MARGIN = 1.05
"""A redrawn latent starts this factor above the TopK threshold of the token it was drawn from (at
exactly the threshold it would tie with the k-th latent)."""


@torch.no_grad()
def score_pool(sae: TopKSAE, pool: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pool row: the residual ``x - x_hat`` and the k-th largest ranked pre-activation (the TopK
    threshold), computed in chunks (dense forward)."""
    res, thr = [], []
    for i in range(0, pool.shape[0], chunk):
        xb = pool[i:i + chunk]
        pre = sae.pre(xb)
        ranked = pre / sae.rank_scale if sae.ranked else pre
        idx = sae.select(pre)
        thr.append(ranked.gather(-1, idx).min(-1).values)
        z = torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx).relu())
        res.append(xb - torch.addmm(sae.b_dec, z, sae.decoder()))
    return torch.cat(res), torch.cat(thr)


def pool_flops(n_rows: int, d: int, width: int) -> int:
    """Matmul FLOPs of scoring ``n_rows`` pool rows: the dense encode and decode, ``4 N d M``."""
    return 4 * int(n_rows) * int(d) * int(width)


def _reset_adam(opt: torch.optim.Optimizer, param: torch.Tensor, index: tuple) -> None:
    state = opt.state.get(param)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][index] = 0.0


@torch.no_grad()
def resample_dead(sae: TopKSAE, opt: torch.optim.Optimizer, pool: torch.Tensor, dead: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Reinitialise the ``dead`` latents (a boolean ``[M]`` mask) from the pool ``[N, d]``; returns the
    indices of the latents actually reinitialised and the matmul FLOPs spent scoring the pool."""
    dead_idx = torch.nonzero(dead, as_tuple=False).flatten()
    if dead_idx.numel() == 0 or pool.shape[0] == 0:
        return dead_idx[:0], 0
    pool = pool.float()
    res, thr = score_pool(sae, pool)
    flops = pool_flops(pool.shape[0], sae.d, sae.width)
    loss = res.pow(2).sum(-1)
    weight = loss.pow(2)
    n = min(int(dead_idx.numel()), int((weight > 0).sum()))
    if n == 0:
        return dead_idx[:0], flops
    gen_device = generator.device if generator is not None else pool.device
    rows = torch.multinomial(weight.to(gen_device), n, replacement=False, generator=generator).to(pool.device)
    latents = dead_idx[:n]
    u = res[rows] / res[rows].norm(dim=-1, keepdim=True).clamp_min(1e-12)
    centred = pool[rows] - sae.b_dec
    norm = centred.norm(dim=-1)
    target = MARGIN * thr[rows] * (sae.rank_scale[latents] if sae.ranked else 1.0)
    ok = (norm > 1e-6) & (target > 0)
    latents, u, e, g = latents[ok], u[ok], centred[ok] / norm[ok, None], target[ok] / norm[ok]
    sae.W_dec[latents] = u * sae.row_norm[latents, None]
    sae.W_enc[:, latents] = (e * g[:, None]).T
    # the pre-activation is g e . (x - b_dec) in either parametrisation of the encoder's input
    sae.b_enc[latents] = 0.0 if sae.apply_b_dec_to_input else -(sae.b_dec @ sae.W_enc[:, latents])
    _reset_adam(opt, sae.W_dec, (latents,))
    _reset_adam(opt, sae.W_enc, (slice(None), latents))
    _reset_adam(opt, sae.b_enc, (latents,))
    return latents, flops
