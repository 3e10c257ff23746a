"""The TopK SAE module the project trains (:mod:`stitchplug_sae.trainer`) and its decoder-norm folding."""

from __future__ import annotations

import torch
from torch import nn

from stitchplug.errors import StageError


class TopKSAE(nn.Module):
    """``f(x) = ReLU(TopK(x @ W_enc + b_enc))``, ``x_hat = f(x) @ W_dec + b_dec`` (dense decode).

    With ``apply_b_dec_to_input`` (the SAELens default) the encoder reads ``x - b_dec`` instead, so the
    decoder bias also centres the encoder's input; the backward pass then needs ``dpre @ W_enc^T``
    (2BdM more FLOPs per step).
    """

    def __init__(self, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor, k: int,
                 apply_b_dec_to_input: bool = False):
        super().__init__()
        d, m = W_enc.shape
        if tuple(W_dec.shape) != (m, d) or b_enc.shape != (m,) or b_dec.shape != (d,):
            raise StageError(f"inconsistent SAE shapes: W_enc {tuple(W_enc.shape)}, W_dec {tuple(W_dec.shape)}, "
                             f"b_enc {tuple(b_enc.shape)}, b_dec {tuple(b_dec.shape)}")
        if not 0 < k <= m:
            raise StageError(f"TopK k={k} must be between 1 and the width {m}")
        self.W_enc = nn.Parameter(W_enc.detach().float().clone())
        self.b_enc = nn.Parameter(b_enc.detach().float().clone())
        self.W_dec = nn.Parameter(W_dec.detach().float().clone())
        self.b_dec = nn.Parameter(b_dec.detach().float().clone())
        self.k = int(k)
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)

    @property
    def d(self) -> int:
        return self.W_enc.shape[0]

    @property
    def width(self) -> int:
        return self.W_enc.shape[1]

    @classmethod
    def random(cls, d: int, width: int, k: int, generator: torch.Generator | None = None,
               b_dec: torch.Tensor | None = None, apply_b_dec_to_input: bool = False) -> "TopKSAE":
        """Random unit-norm decoder rows, encoder = decoder transpose, zero encoder bias."""
        W_dec = torch.randn(width, d, generator=generator)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        bd = torch.zeros(d) if b_dec is None else b_dec
        return cls(W_dec.T.contiguous(), torch.zeros(width), W_dec, bd, k, apply_b_dec_to_input)

    @classmethod
    def from_weights(cls, w: dict, apply_b_dec_to_input: bool = False) -> "TopKSAE":
        """From ``{W_enc [d,M], b_enc, W_dec [M,d], b_dec, k}`` (and optionally the weights' own
        ``apply_b_dec_to_input`` flag). ``b_enc`` is re-expressed for this SAE's own flag, so the
        function is unchanged: the pre-activation is ``x @ W_enc + c`` in both parametrisations."""
        missing = [key for key in ("W_enc", "b_enc", "W_dec", "b_dec", "k") if key not in w]
        if missing:
            raise StageError(f"SAE weights lack {', '.join(missing)}")
        W_enc, b_dec = w["W_enc"].float(), w["b_dec"].float()
        shift = b_dec @ W_enc
        c = w["b_enc"].float() - (shift if w.get("apply_b_dec_to_input") else 0.0)
        b_enc = c + shift if apply_b_dec_to_input else c
        return cls(W_enc, b_enc, w["W_dec"], b_dec, int(w["k"]), apply_b_dec_to_input)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return torch.addmm(self.b_enc, x, self.W_enc)

    def topk(self, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, vals.relu())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(x_hat, z, pre)``."""
        pre = self.pre(x)
        z = self.topk(pre)
        return torch.addmm(self.b_dec, z, self.W_dec), z, pre

    @torch.no_grad()
    def normalise_decoder_(self) -> None:
        """Set every decoder row to unit norm (the per-step constraint; does not touch the encoder)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def fold_decoder_norms(sae: TopKSAE) -> torch.Tensor:
    """Make decoder rows unit norm while keeping each latent's contribution: ``W_dec[i] /= n_i``,
    ``W_enc[:, i] *= n_i``, ``b_enc[i] *= n_i``. Returns the norms ``n``.

    For the selected latents the output is unchanged (ReLU commutes with ``n_i > 0``). TopK now ranks
    ``n_i * pre_i`` instead of ``pre_i``, so the selected set can change where rescaling reorders the
    k-th boundary; it is identical when all ``n_i`` are equal (see docs/flops.md).
    """
    n = sae.W_dec.norm(dim=1).clamp_min(1e-12)
    sae.W_dec.div_(n[:, None])
    sae.W_enc.mul_(n[None, :])
    sae.b_enc.mul_(n)
    return n
