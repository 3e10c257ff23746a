"""Per-example features: texts through A (layer lA) and B (layer lB), pooled over tokens.

Each text is tokenised by both models; A's tokens are cut to ``context_size`` and B keeps the tokens
that end within the same characters (so both models read the same text; B is also capped at
``context_size``). Residuals are captured with the adapters (right-padded batches: the models are
causal, so padding after a text cannot change its positions). Any number of *encoders* per side
(identity for the dense residual, ``sae.encode`` for SAE latents) map the non-special tokens'
residuals to features, which are then pooled per example: ``mean`` over non-special tokens (the
paper, SAEBench) or ``last`` (the last non-special token, as in Kantamneni et al.).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from stitchplug.api import StageError

Encoder = Callable[[torch.Tensor], torch.Tensor]
POOLINGS = ("mean", "last")


def paired_encodings(adapter_a, adapter_b, text: str, context_size: int):
    """``(Encoded A, Encoded B)`` of ``text``: A cut to ``context_size`` tokens, B to the same
    characters (the core's :func:`~stitchplug.api.first_window`)."""
    from stitchplug.api import first_window

    w = first_window(text, adapter_a, adapter_b, context_size)
    return w.source, w.target


def paired_ids(adapter_a, adapter_b, text: str, context_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of ``text`` for A (at most ``context_size``) and for B (the same characters)."""
    ea, eb = paired_encodings(adapter_a, adapter_b, text, context_size)
    return ea.ids, eb.ids


def capture_many(adapter, layer: int, ids: Sequence[torch.Tensor], batch_size: int = 8,
                 progress: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """Residual ``[len(ids_i), d]`` before ``layer`` for every id sequence (length-sorted batches)."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[torch.Tensor | None] = [None] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(ids[i]) for i in chunk)
        batch = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, i in enumerate(chunk):
            batch[row, : len(ids[i])] = ids[i]
        resid = adapter.capture(batch, [layer])[layer].float().cpu()
        for row, i in enumerate(chunk):
            out[i] = resid[row, : len(ids[i])]
        if progress is not None:
            progress(len(chunk))
    return out  # type: ignore[return-value]


@torch.no_grad()
def pool(resid: Sequence[torch.Tensor], ids: Sequence[torch.Tensor], special: frozenset[int],
         encoders: dict[str, Encoder], pooling: str = "mean", chunk: int = 4096) -> dict[str, np.ndarray]:
    """Pooled features ``{name: [n_examples, f]}`` of each encoder over non-special tokens."""
    if pooling not in POOLINGS:
        raise StageError(f"unknown pooling {pooling!r} (known: {', '.join(POOLINGS)})")
    rows, owner = [], []
    for i, (r, t) in enumerate(zip(resid, ids)):
        keep = torch.tensor([int(x) not in special for x in t.tolist()], dtype=torch.bool)
        if not keep.any():
            raise StageError(f"example {i} has no non-special tokens to pool over")
        x = r[keep]
        if pooling == "last":
            x = x[-1:]
        rows.append(x)
        owner.append(torch.full((x.shape[0],), i, dtype=torch.long))
    x_all, who = torch.cat(rows), torch.cat(owner)
    n = len(resid)
    counts = torch.bincount(who, minlength=n).double()[:, None]
    out: dict[str, np.ndarray] = {}
    for name, enc in encoders.items():
        acc = None
        for s in range(0, x_all.shape[0], chunk):
            f = enc(x_all[s:s + chunk]).double()
            acc = torch.zeros(n, f.shape[1], dtype=torch.float64) if acc is None else acc
            acc.index_add_(0, who[s:s + chunk], f)
        out[name] = (acc / counts).numpy()
    return out


def sae_encoder(sae) -> Encoder:
    """``x [N, d] -> latents [N, d_sae]`` of a SAELens SAE (on the SAE's device and dtype)."""

    def enc(x: torch.Tensor) -> torch.Tensor:
        return sae.encode(x.to(device=sae.device, dtype=sae.dtype)).float().cpu()

    return enc


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def extract(adapter_a, layer_a: int, adapter_b, layer_b: int, texts: Sequence[str], *,
            encoders_a: dict[str, Encoder], encoders_b: dict[str, Encoder], context_size: int = 128,
            pooling: str = "mean", batch_size: int = 8, progress: bool = False, desc: str = "features",
            keep_tokens: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """``{"A": {name: [n, f]}, "B": {...}}`` for the given encoders (add ``identity`` for dense); a
    side without encoders is not run (unless ``keep_tokens``) and gets ``{}``.

    ``keep_tokens``: also ``"tokens": {"A": residuals, "B": residuals, "enc": [(Encoded A, Encoded B)]}``
    (per example, every token), for :mod:`~stitchplug_probe.coverage`."""
    encs = [paired_encodings(adapter_a, adapter_b, t, context_size) for t in texts]
    pairs = [(ea.ids, eb.ids) for ea, eb in encs]
    run_a, run_b = keep_tokens or bool(encoders_a), keep_tokens or bool(encoders_b)
    bar = None
    if progress:
        from stitchplug.api import progress
        bar = progress(total=(run_a + run_b) * len(texts), desc=desc, leave=False)
    tick = bar.update if bar is not None else None
    ra = capture_many(adapter_a, layer_a, [p[0] for p in pairs], batch_size, tick) if run_a else []
    rb = capture_many(adapter_b, layer_b, [p[1] for p in pairs], batch_size, tick) if run_b else []
    if bar is not None:
        bar.close()
    out = {"A": pool(ra, [p[0] for p in pairs], adapter_a.special_ids, encoders_a, pooling) if run_a else {},
           "B": pool(rb, [p[1] for p in pairs], adapter_b.special_ids, encoders_b, pooling) if run_b else {}}
    if keep_tokens:
        out["tokens"] = {"A": ra, "B": rb, "enc": encs}
    return out
