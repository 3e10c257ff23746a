"""The unembedding path of a model: what logit a residual direction writes (direct logit attribution).

``folded_unembed(adapter)`` is ``W_eff = C diag(w) W_U [d_model, d_vocab]``: ``w`` the final norm's
weight (1 when the model has none), ``C`` the centring projection ``I - 11^T/d`` for a LayerNorm
(identity for RMSNorm). ``d @ W_eff`` ranks the tokens a direction ``d`` promotes (top) and suppresses
(bottom); dividing by the final norm's scale at a token gives the logit change there. Bias and softcap
are left out: they do not depend on ``d``.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import StitchplugError


@torch.no_grad()
def folded_unembed(adapter: Any) -> torch.Tensor:
    """``W_eff`` (float32, CPU) of a :class:`~stitchplug.adapter.ModelAdapter`; the final norm's weight
    and centring are folded in when the adapter wraps a TransformerLens model, otherwise ``unembed()``."""
    model = getattr(adapter, "model", None)
    if model is None or not hasattr(model, "W_U"):
        W = adapter.unembed()
        if W is None:
            raise StitchplugError(f"model {getattr(adapter, 'name', adapter)!r} exposes no unembedding")
        return W.detach().float().cpu()
    W = model.W_U.detach().float().cpu()
    ln = getattr(model, "ln_final", None)
    w = getattr(ln, "w", None)
    if w is not None:
        W = w.detach().float().cpu()[:, None] * W
    if ln is not None and "LayerNorm" in type(ln).__name__:
        W = W - W.mean(0, keepdim=True)
    return W
