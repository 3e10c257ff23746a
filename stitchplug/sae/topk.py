"""The TopK SAE module the project trains (:mod:`stitchplug.sae.trainer`), its sparse decode, and the
warm starts from given (e.g. transferred) weights: ``fold``, ``fold-rank``, ``preserve`` and ``rescale``
(docs/flops.md)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

WARM_STARTS = ("fold", "fold-rank", "preserve", "rescale", "unit")
"""How a trainer starts from given weights whose decoder rows are not unit norm (docs/flops.md):
``fold``: unit-norm rows, the norms folded into the encoder (TopK then ranks ``n_i pre_i``, so step 0
can select other latents); ``fold-rank``: ``fold``, but TopK ranks ``pre_i / n_i`` with the step-0
norms kept as a fixed per-latent ranking scale (step 0 computes exactly the given SAE); ``preserve``:
rows kept at their step-0 norms and renormalised to those norms after every step (step 0 computes
exactly the given SAE); ``rescale``: unit-norm rows (the
trained parameter, renormalised to 1 as in the plain recipe) times a fixed per-latent output scale,
the step-0 norms (step 0 computes exactly the given SAE; TopK ranks ``pre_i`` as the given SAE does,
and the encoder keeps the given SAE's scale); ``unit``: ``rescale``, and every encoder column (and its
bias) divided by its norm ``c_i``, so both trained matrices have a scratch arm's unit scale; ``c_i``
moves into the fixed output scale (``n_i c_i``) and a fixed ranking scale (TopK ranks ``c_i pre'_i``,
the given SAE's pre-activation), so step 0 computes exactly the given SAE."""

from ..errors import StageError


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
        # the norm every decoder row is renormalised to after each step (1: the plain recipe;
        # the step-0 norms under the ``preserve`` warm start)
        self.register_buffer("row_norm", torch.ones(m))
        # a fixed per-latent output scale: the decoder reads ``out_scale[i] * W_dec[i]`` (all ones, and
        # never applied, unless the ``rescale`` warm start set the step-0 norms; see :meth:`decoder`)
        self.register_buffer("out_scale", torch.ones(m))
        self.scaled = False
        # a fixed per-latent ranking scale: TopK ranks ``pre_i / rank_scale[i]`` (all ones, and never
        # applied, unless the ``fold-rank`` warm start set the step-0 norms; see :meth:`select`)
        self.register_buffer("rank_scale", torch.ones(m))
        self.ranked = False

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

    def decoder(self) -> torch.Tensor:
        """The decoder rows the function uses: ``W_dec`` scaled by ``out_scale`` under ``rescale``
        (``[M, d]``, differentiable in ``W_dec``), else ``W_dec`` itself."""
        return self.W_dec * self.out_scale[:, None] if self.scaled else self.W_dec

    def select(self, pre: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Indices of the ``k`` (default: the SAE's) latents TopK keeps per row: the largest ``pre``, or
        the largest ``pre / rank_scale`` under ``fold-rank``."""
        ranked = pre / self.rank_scale if self.ranked else pre
        return ranked.topk(self.k if k is None else k, dim=-1, sorted=False).indices

    def topk(self, pre: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Dense codes: the ``k`` (default: the SAE's) selected pre-activations, ReLU'd, zeros elsewhere."""
        idx = self.select(pre, k)
        return torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx).relu())

    @torch.no_grad()
    def plain_weights(self) -> dict:
        """``{W_enc, b_enc, W_dec, b_dec}`` of a plain TopK SAE (ranks ``pre``, decodes ``z @ W_dec``)
        computing this SAE's function: the ranking scale divided out of the encoder (codes shrink by
        it, the selection is kept) and multiplied, with the output scale, into the decoder rows."""
        W_enc, b_enc, W_dec = self.W_enc.detach(), self.b_enc.detach(), self.decoder().detach()
        if self.ranked:
            W_enc, b_enc, W_dec = W_enc / self.rank_scale, b_enc / self.rank_scale, W_dec * self.rank_scale[:, None]
        return {"W_enc": W_enc.clone(), "b_enc": b_enc.clone(), "W_dec": W_dec.clone(), "b_dec": self.b_dec.detach().clone()}

    def forward(self, x: torch.Tensor, sparse: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Dense: ``(x_hat, z, pre)``. ``sparse=True``: ``(x_hat, vals, idx)`` from :meth:`forward_sparse`
        (a keyword, so a ``DistributedDataParallel`` wrapper passes it through)."""
        if sparse:
            return self.forward_sparse(x)
        pre = self.pre(x)
        z = self.topk(pre)
        return torch.addmm(self.b_dec, z, self.decoder()), z, pre

    def forward_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same function as :meth:`forward`, touching only the ``k`` selected latents per row
        where gradients flow: ``(x_hat, vals [B, k], idx [B, k])``.

        The dense pre-activation is computed without autograd to pick the TopK indices; the selected
        values carry a backward (:class:`_SelectedPre`) that touches only the selected encoder columns
        (a sparse ``[M, B] @ [B, d]`` product for ``dW_enc``, ``embedding_bag`` for ``dx``), and the
        decode is ``embedding_bag`` (a weighted sum of the ``k`` gathered decoder rows) instead of
        ``[B, M] @ [M, d]``. Backward then costs ``O(B k d)`` instead of ``8 B d M`` (``10`` with
        ``apply_b_dec_to_input``); the forward's selection matmul (``2 B d M``) remains. The loss and
        every gradient equal the dense step's up to float summation order (tests/test_sae_sparse.py).
        """
        xin = x - self.b_dec if self.apply_b_dec_to_input else x
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, xin, self.W_enc)
            idx = self.select(pre)
        vals = _SelectedPre.apply(xin, self.W_enc, self.b_enc, idx, pre).relu()
        w = vals * self.out_scale[idx] if self.scaled else vals
        x_hat = F.embedding_bag(idx, self.W_dec, per_sample_weights=w, mode="sum") + self.b_dec
        return x_hat, vals, idx

    @torch.no_grad()
    def normalise_decoder_(self) -> None:
        """Set every decoder row to its target norm ``row_norm`` (1 unless the ``preserve`` warm start
        set the step-0 norms; the per-step constraint; does not touch the encoder)."""
        self.W_dec.mul_((self.row_norm / self.W_dec.norm(dim=1).clamp_min(1e-12))[:, None])


def analytic_step_flops(batch: int, d: int, width: int, aux: bool = False,
                        apply_b_dec_to_input: bool = False) -> int:
    """Matmul FLOPs of one training step of the dense TopK SAE (see docs/flops.md).

    Forward: encoder ``x @ W_e`` (2BdM) and dense decoder ``z @ W_d`` (2BdM). Backward: ``dW_d = z^T g``
    (2BdM), ``dz = g W_d^T`` (2BdM), ``dW_e = x^T dpre`` (2BdM); ``dx`` is not needed: 10BdM. When the
    encoder reads ``x - b_dec``, ``db_dec`` also needs ``dpre W_e^T`` (+2BdM): 12BdM. AuxK adds a
    second dense decode of the dead latents (2BdM forward, 4BdM backward): +6BdM.
    """
    per = 10 + (2 if apply_b_dec_to_input else 0) + (6 if aux else 0)
    return per * int(batch) * int(d) * int(width)


class _SelectedPre(torch.autograd.Function):
    """``(xin @ W_enc + b_enc).gather(1, idx)`` given the precomputed ``pre``; the backward touches
    only the ``B * k`` selected (row, latent) pairs."""

    @staticmethod
    def forward(ctx, xin, W_enc, b_enc, idx, pre):  # noqa: D102
        ctx.save_for_backward(xin, W_enc, idx)
        return pre.gather(1, idx)

    @staticmethod
    def backward(ctx, dvals):  # noqa: D102
        xin, W_enc, idx = ctx.saved_tensors
        (B, k), M = idx.shape, W_enc.shape[1]
        flat, dflat = idx.reshape(-1), dvals.reshape(-1).contiguous()
        d_xin = d_W = d_b = None
        if ctx.needs_input_grad[2]:
            d_b = torch.zeros(M, dtype=dvals.dtype, device=dvals.device).index_add_(0, flat, dflat)
        if ctx.needs_input_grad[1]:
            rows = torch.arange(B, device=idx.device).repeat_interleave(k)
            s_t = torch.sparse_coo_tensor(torch.stack([flat, rows]), dflat, (M, B), check_invariants=False)
            d_W = torch.sparse.mm(s_t, xin).t()
        if ctx.needs_input_grad[0]:
            d_xin = F.embedding_bag(idx, W_enc.t().contiguous(), per_sample_weights=dvals.contiguous(), mode="sum")
        return d_xin, d_W, d_b, None, None


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


@torch.no_grad()
def warm_start(sae: TopKSAE, mode: Literal["fold", "fold-rank", "preserve", "rescale", "unit"]) -> dict:
    """Prepare ``sae`` (given weights, e.g. the transferred SAE theta') for training; see
    :data:`WARM_STARTS` and docs/flops.md. Returns the decoder row norms found (min/max/mean).

    ``preserve`` leaves every weight as it is and records the step-0 row norms as the rows' target
    norms, so the first step starts from exactly the given function. A scratch arm keeps its own
    step-0 norms (1) under the same rule, which is why the comparison stays fair: both arms keep the
    decoder row norms they started with.

    ``rescale`` divides every decoder row by its norm ``n_i`` and records ``n_i`` as the latent's fixed
    output scale (``out_scale``): the function is the given SAE's (the encoder is untouched, so TopK
    ranks the same pre-activations), while the trained decoder parameter has unit rows like a
    scratch arm's, so Adam moves its directions at the scratch arm's relative speed. The scratch arm
    keeps its own step-0 scale (1) under the same rule.

    ``fold-rank`` folds like ``fold`` and records ``n_i`` as the latent's fixed ranking scale
    (``rank_scale``): TopK ranks ``n_i pre_i / n_i``, theta''s own pre-activation, so step 0 computes
    exactly the given SAE, while the parameters are ``fold``'s (unit rows, encoder ``n_i`` times
    larger). The same function family as ``rescale``; only the encoder's scale under Adam differs.

    ``unit`` is ``rescale`` with every encoder column at unit norm, a scratch arm's encoder scale:
    ``W_enc[:, i] /= c_i``, ``b_enc[i] /= c_i`` (``c_i`` the column norm), so the pre-activation is
    ``pre_i / c_i``; the fixed ranking scale ``1 / c_i`` makes TopK rank ``pre_i`` and the fixed output
    scale ``n_i c_i`` makes the decode ``pre_i n_i W_dec[i]``: step 0 computes exactly the given SAE.
    Between ``rescale`` (encoder at theta''s scale, ``c_i`` about 0.25 on the default pair) and
    ``fold-rank`` (encoder ``n_i`` times larger), it gives Adam's per-element steps the scratch arm's
    relative size on both matrices.
    """
    if mode not in WARM_STARTS:
        raise StageError(f"unknown warm start {mode!r} (choose from {', '.join(WARM_STARTS)})")
    n = sae.W_dec.norm(dim=1).clamp_min(1e-12)
    stats = {"decoder_norm_min": float(n.min()), "decoder_norm_max": float(n.max()),
             "decoder_norm_mean": float(n.mean())}
    if mode in ("fold", "fold-rank"):
        fold_decoder_norms(sae)
        sae.row_norm.fill_(1.0)
        if mode == "fold-rank":
            sae.rank_scale.copy_(n)
            sae.ranked = True
    elif mode in ("rescale", "unit"):
        sae.W_dec.div_(n[:, None])
        sae.row_norm.fill_(1.0)
        sae.out_scale.copy_(n)
        sae.scaled = True
        if mode == "unit":
            c = sae.W_enc.norm(dim=0).clamp_min(1e-12)
            sae.W_enc.div_(c[None, :])
            sae.b_enc.div_(c)
            sae.out_scale.mul_(c)
            sae.rank_scale.copy_(1.0 / c)
            sae.ranked = True
            stats.update(encoder_norm_min=float(c.min()), encoder_norm_max=float(c.max()),
                         encoder_norm_mean=float(c.mean()))
    else:
        sae.row_norm.copy_(n)
    return stats
