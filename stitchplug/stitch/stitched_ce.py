"""Stitched next-token loss (paper Table 1): CE of A, of B, and of the four stitched models.

- ``A->B``: B runs on its own tokens; at layer lB the residual at every aligned position is replaced
  by ``T_up`` of A's residual (layer lA) at the matching A position; other positions keep B's own.
- ``B->A``: the same with the roles swapped and ``T_down``.
- ``A->B->A``: A's residual at lA replaced by ``T_down(T_up(.))`` of itself; ``B->A->B`` likewise.

Special tokens (BOS etc.) are never patched: the stitch is trained without them. CE is averaged over
every predicted non-special token of the model that produces the logits (its own tokenisation),
whether or not that position was patched: for a same-tokenizer pair every non-special position is
patched and this is exactly the paper's definition. ``ce_patched`` also averages over only the
positions whose residual was replaced, and ``share_patched`` is the fraction of non-special
positions replaced on each side.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from ..adapter import ModelAdapter
from ..cache.windows import Window, paired_windows
from .model import Stitch

KEYS = ("ce_a", "ce_b", "a_to_b", "b_to_a", "a_to_b_to_a", "b_to_a_to_b")


def windows_for_texts(texts: Iterable[str], source: ModelAdapter, target: ModelAdapter,
                      context_size: int = 128, aligner: str = "auto") -> list[Window]:
    """Aligned windows of each text (:func:`~stitchplug.cache.windows.paired_windows` with the
    aligner named ``aligner``; each unpacks as ``(enc_a, enc_b, idx_a, idx_b)``), those with at least
    one aligned pair."""
    from ..cache.align import get_aligner

    align = get_aligner(aligner, source, target)[1]
    out: list[Window] = []
    for text in texts:
        out.extend(paired_windows(text, source, target, context_size, aligner=align))
    return [w for w in out if len(w.idx_source) > 0]


def _replace(idx: torch.Tensor, values: torch.Tensor):
    def patch(resid: torch.Tensor) -> torch.Tensor:
        out = resid.clone()
        out[0, idx] = values.to(device=resid.device, dtype=resid.dtype)
        return out
    return patch


def _map_own(idx: torch.Tensor, fn):
    def patch(resid: torch.Tensor) -> torch.Tensor:
        out = resid.clone()
        out[0, idx] = fn(resid[0, idx].float()).to(resid.dtype)
        return out
    return patch


class _Mean:
    def __init__(self) -> None:
        self.sum, self.n = 0.0, 0

    def add(self, losses: torch.Tensor, mask: torch.Tensor) -> None:
        self.sum += float(losses[mask].double().sum())
        self.n += int(mask.sum())

    def value(self) -> float:
        return self.sum / self.n if self.n else float("nan")


@torch.no_grad()
def stitched_ce(source: ModelAdapter, target: ModelAdapter, stitch: Stitch, source_layer: int,
                target_layer: int, windows: Sequence[Window]) -> dict[str, Any]:
    """Table-1 losses over ``windows`` (see the module docstring for the exact definition)."""
    stitch = stitch.float().cpu()
    lA, lB = int(source_layer), int(target_layer)
    acc = {k: _Mean() for k in KEYS}
    acc_p = {k: _Mean() for k in KEYS[2:]}
    patched = {"a": [0, 0], "b": [0, 0]}  # [patched, non-special]
    for enc_a, enc_b, ia, ib in windows:
        ids_a, ids_b = enc_a.ids[None], enc_b.ids[None]
        ia_t, ib_t = torch.as_tensor(ia, dtype=torch.long), torch.as_tensor(ib, dtype=torch.long)
        tgt_a = ~enc_a.special[1:]  # predicted token is not special
        tgt_b = ~enc_b.special[1:]
        own_a = torch.nonzero(~enc_a.special).flatten()
        own_b = torch.nonzero(~enc_b.special).flatten()
        hA = source.capture(ids_a, [lA])[lA][0].float().cpu()
        hB = target.capture(ids_b, [lB])[lB][0].float().cpu()
        runs = {
            "ce_a": (source, ids_a, None, tgt_a, None),
            "ce_b": (target, ids_b, None, tgt_b, None),
            "a_to_b": (target, ids_b, {lB: _replace(ib_t, stitch.up(hA[ia_t]))}, tgt_b, ib_t),
            "b_to_a": (source, ids_a, {lA: _replace(ia_t, stitch.down(hB[ib_t]))}, tgt_a, ia_t),
            "a_to_b_to_a": (source, ids_a, {lA: _map_own(own_a, lambda h: stitch.down(stitch.up(h)))}, tgt_a, own_a),
            "b_to_a_to_b": (target, ids_b, {lB: _map_own(own_b, lambda h: stitch.up(stitch.down(h)))}, tgt_b, own_b),
        }
        losses_of = {}
        for model, ids in ((source, ids_a), (target, ids_b)):  # one shared forward prefix per model
            mine = {key: r[2] for key, r in runs.items() if r[0] is model and r[1] is ids and key not in losses_of}
            losses_of.update(model.token_losses_many(ids, mine))
        for key, (model, ids, patches, mask, where) in runs.items():
            losses = losses_of[key][0].cpu()
            acc[key].add(losses, mask)
            if where is not None:
                pm = torch.zeros_like(mask)
                w = where[where < mask.shape[0]]
                pm[w] = True
                acc_p[key].add(losses, pm & mask)
        patched["a"][0] += len(ia)
        patched["a"][1] += len(own_a)
        patched["b"][0] += len(ib)
        patched["b"][1] += len(own_b)
    out: dict[str, Any] = {k: a.value() for k, a in acc.items()}
    out["ce_patched"] = {k: a.value() for k, a in acc_p.items()}
    out["share_patched"] = {side: (p / n if n else 0.0) for side, (p, n) in patched.items()}
    out["n_windows"] = len(windows)
    out["n_predicted"] = {"a": acc["ce_a"].n, "b": acc["ce_b"].n}
    return out
