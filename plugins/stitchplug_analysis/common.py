"""Shared pieces of the feature analysis: the unembedding path, SAE codes, held-out captures.

Everything here works on a :class:`stitchplug.adapter.TLAdapter` (a TransformerLens model) and any
``sae_lens.SAE`` that :func:`stitchplug.api.canonical_weights` accepts.

**Unembedding path (how the final norm is folded).** The logit of token ``y`` that a residual
direction ``d`` writes is ``(d @ W_eff)[y] / s_t`` where ``W_eff = C diag(w) W_U``: ``w`` is the
final norm's weight (``ln_final.w``; 1 when the model has none), ``C`` the centring projection
``I - 11^T/d`` for a LayerNorm (identity for RMSNorm) and ``s_t`` the final norm's scale at token
``t`` (the residual's RMS / standard deviation, read from ``ln_final.hook_scale``): the final norm
linearised at the token, as in direct logit attribution. The unembedding bias and a logit softcap
(if any) are left out: they do not depend on ``d``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ._core import StageError, folded_unembed


def _tl_model(adapter: Any):
    model = getattr(adapter, "model", None)
    if model is None or not hasattr(model, "W_U"):
        raise StageError(f"feature analysis needs a TransformerLens model adapter; {getattr(adapter, 'name', adapter)!r} is not one")
    return model


def unembed_path(adapter: Any) -> torch.Tensor:
    """``W_eff [d_model, d_vocab]`` (float32): the unembedding with the final norm's weight and
    centring folded in (see the module docstring); :func:`stitchplug.api.folded_unembed` once the
    adapter is known to wrap a TransformerLens model."""
    _tl_model(adapter)
    return folded_unembed(adapter)


@torch.no_grad()
def decoder_rows(sae: Any) -> torch.Tensor:
    """Decoder rows ``[m, d]`` (float32) matching ``sae.encode``'s codes: ``x_hat = f @ rows + b``."""
    from stitchplug.api import canonical_weights

    return canonical_weights(sae)["W_dec"].float()


@torch.no_grad()
def codes(sae: Any, x: torch.Tensor) -> torch.Tensor:
    """``sae.encode(x)`` as float32 on the CPU (``x [n, d]``)."""
    dev = getattr(sae, "device", "cpu")
    return sae.encode(x.to(dev, getattr(sae, "dtype", torch.float32))).float().cpu()


@dataclass
class Capture:
    """One model's pass over one held-out window."""

    ids: torch.Tensor  # [T]
    ends: torch.Tensor  # [T] character end offsets (-1 special)
    resid: torch.Tensor  # [T, d] residual before the SAE's layer
    scale: torch.Tensor  # [T] final-norm scale
    special: torch.Tensor  # [T] bool


@torch.no_grad()
def capture(adapter: Any, enc: Any, layer: int) -> Capture:
    """Residual at ``layer`` and the final-norm scale of one encoded window (one full forward)."""
    model = _tl_model(adapter)
    hook = adapter.hook_name(layer)
    names = {hook, "ln_final.hook_scale"}
    _, cache = model.run_with_cache(enc.ids[None].to(adapter.device), names_filter=lambda n: n in names)
    if "ln_final.hook_scale" in cache:
        scale = cache["ln_final.hook_scale"][0].reshape(-1).float().cpu()
    else:  # no final norm (or folded away): the path is linear
        scale = torch.ones(len(enc.ids))
    return Capture(enc.ids.cpu(), enc.ends.cpu(), cache[hook][0].float().cpu(), scale, enc.special.cpu())


@dataclass
class PairedCaptures:
    """Captures of A (source layer) and B (target layer) on the same held-out windows plus alignment."""

    a: list[Capture] = field(default_factory=list)
    b: list[Capture] = field(default_factory=list)
    idx_a: list[np.ndarray] = field(default_factory=list)
    idx_b: list[np.ndarray] = field(default_factory=list)


def paired_captures(adapter_a: Any, adapter_b: Any, windows: Sequence[tuple], layer_a: int, layer_b: int,
                    progress: bool = False) -> PairedCaptures:
    """``windows``: ``(enc_a, enc_b, idx_a, idx_b)`` tuples (see ``stitch.stitched_ce.windows_for_texts``)."""
    out = PairedCaptures()
    it = windows
    if progress:
        from stitchplug.api import progress as tqdm

        it = tqdm(windows, desc="capture A/B", leave=False)
    for ea, eb, ia, ib in it:
        out.a.append(capture(adapter_a, ea, layer_a))
        out.b.append(capture(adapter_b, eb, layer_b))
        out.idx_a.append(np.asarray(ia, dtype=np.int64))
        out.idx_b.append(np.asarray(ib, dtype=np.int64))
    if not out.a:
        raise StageError("no held-out windows to analyse")
    return out


def paired_windows(texts: Sequence[str], adapter_a: Any, adapter_b: Any, context_size: int,
                   aligner: str = "auto") -> list:
    """The first aligned window of each text (:func:`stitchplug.api.first_window` with the run's
    ``cache.aligner``), those with at least one aligned pair; each unpacks as ``(enc_a, enc_b, idx_a, idx_b)``."""
    from ._core import first_window

    wins = (first_window(text, adapter_a, adapter_b, context_size, aligner=aligner) for text in texts)
    return [w for w in wins if len(w.idx_source)]


def live_codes(sae: Any, cap: Capture) -> torch.Tensor:
    """Codes ``[T, m]`` of one window with special positions (BOS ...) set to zero: SAEs are trained
    without them and their activations there are meaningless."""
    f = codes(sae, cap.resid)
    f[cap.special] = 0
    return f


def pearson_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``x`` with the same column of ``y`` (NaN if constant)."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    num = (x * y).sum(0)
    den = np.sqrt((x * x).sum(0) * (y * y).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    r[den == 0] = np.nan
    return r
