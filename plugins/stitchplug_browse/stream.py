"""One streaming pass per model over the held-out windows: bounded top-k contexts per latent.

Documents go through the model ``chunk`` at a time (one right-padded batch). Per latent and model the pass keeps the ``k`` documents where it fires hardest (value, document, the
start of a ``window``-token context around the maximum and the latent's activations over it), a
log-spaced activation histogram, the firing count and the sum of activations. Nothing of size
``[tokens, latents]`` is kept: each document's codes ``[T, m]`` are reduced to ``[m]`` maxima and
``[window, m]`` contexts, and every ``chunk`` documents are merged into the running top-k with one
``torch.topk`` over ``k + chunk`` candidates.

The B pass also reads the transferred latent on *A's* top contexts (same text, B's own tokens: the B
positions whose characters fall in A's context), so a page can show both models on the same string.

Resumable: after every ``checkpoint`` documents the state is saved atomically
(``RUN/browse/state/pass_<side>.pt``, written to a temporary file and renamed); a re-run with the same
settings continues from the first document not yet merged, and a finished pass is not redone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ._core import StageError, progress_bar

HIST_EDGES = np.logspace(-3, 4, 71)
"""Activation histogram bins (log-spaced, 10 per decade from 1e-3 to 1e4; values outside land in the end bins)."""


def sae_fingerprint(sae: Any) -> str:
    h = hashlib.sha256()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        t = getattr(sae, name, None)
        if t is not None:
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class TopK:
    """Running per-latent state of one pass (all tensors on the CPU)."""

    def __init__(self, m: int, k: int, window: int, cross_width: int = 0):
        self.m, self.k, self.window = m, k, window
        self.val = torch.full((m, k), -float("inf"))
        self.doc = torch.full((m, k), -1, dtype=torch.int32)
        self.start = torch.zeros((m, k), dtype=torch.int32)
        self.ctx = torch.full((m, k, window), float("nan"), dtype=torch.float16)
        self.count = torch.zeros(m, dtype=torch.int64)
        self.total = torch.zeros(m, dtype=torch.float64)
        self.hist = torch.zeros(m * (len(HIST_EDGES) - 1), dtype=torch.int64)
        self.n_tokens = 0
        self.next_doc = 0
        self.computed = 0  # documents this process ran through the model (not restored from a checkpoint)
        self.cross = torch.full((m, k, cross_width), float("nan"), dtype=torch.float16) if cross_width else None

    def state(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "computed"}

    @classmethod
    def from_state(cls, st: dict) -> "TopK":
        obj = cls.__new__(cls)
        vars(obj).update(st)
        obj.computed = 0
        return obj

    # -- one document ----------------------------------------------------------------------
    def reduce(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``f [T, m]`` (special rows already zero) -> (max [m], window start [m], context [W, m]);
        adds the firing counts, sums and histogram to the state. The maximum sits at offset
        ``W - W // 4 - 1`` of its context (more text before it than after) unless the document's edge is closer."""
        T = f.shape[0]
        nz = f.nonzero(as_tuple=True)
        vals = f[nz]
        self.count += torch.bincount(nz[1], minlength=self.m)
        self.total += torch.zeros(self.m, dtype=torch.float64).index_add_(0, nz[1], vals.double())
        nb = len(HIST_EDGES) - 1
        bins = np.clip(np.searchsorted(HIST_EDGES, vals.numpy(), side="right") - 1, 0, nb - 1)
        self.hist += torch.bincount(nz[1] * nb + torch.from_numpy(bins), minlength=self.m * nb)
        mx, am = f.max(0)
        W = self.window
        start = (am - (W - W // 4 - 1)).clamp(max=max(T - W, 0)).clamp(min=0)
        idx = start[None, :] + torch.arange(W)[:, None]  # [W, m]
        ok = idx < T
        ctx = f.gather(0, idx.clamp(max=T - 1))
        ctx[~ok] = float("nan")
        return mx, start, ctx

    def merge(self, docs: list[int], mx: torch.Tensor, start: torch.Tensor, ctx: torch.Tensor) -> None:
        """Merge ``len(docs)`` candidates per latent (``mx [n, m]``, ``start [n, m]``, ``ctx [n, W, m]``)."""
        mx = torch.where(mx > 0, mx, torch.tensor(-float("inf")))
        val = torch.cat([self.val, mx.T], 1)
        top, i = val.topk(self.k, dim=1)
        d = torch.tensor(docs, dtype=torch.int32)[None, :].expand(self.m, -1)
        self.doc = torch.cat([self.doc, d], 1).gather(1, i)
        self.start = torch.cat([self.start, start.T.to(torch.int32)], 1).gather(1, i)
        c = torch.cat([self.ctx, ctx.permute(2, 0, 1).to(torch.float16)], 1)
        self.ctx = c.gather(1, i[..., None].expand(-1, -1, self.window))
        self.val = top


def _forward(adapter: Any, ids: list[torch.Tensor], layer: int) -> list[torch.Tensor]:
    """Residuals before ``layer`` of several windows (``[T_i, d]`` each), in one batched forward:
    right-padded, so under causal attention no real position sees a pad token."""
    T = max(len(x) for x in ids)
    batch = torch.zeros((len(ids), T), dtype=torch.long)
    for n, x in enumerate(ids):
        batch[n, :len(x)] = x
    h = adapter.capture(batch, [layer])[layer].float().cpu()
    return [h[n, :len(x)] for n, x in enumerate(ids)]


@torch.no_grad()
def codes(sae: Any, h: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    f = sae.encode(h.to(getattr(sae, "device", "cpu"), getattr(sae, "dtype", torch.float32))).float().cpu()
    f[special] = 0
    return f.clamp_min(0)


def cross_ranges(a: TopK, wins: list, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of A's top contexts ``[m, k]``: the first B position and the number of B positions
    (at most ``width``) whose tokens end inside the characters of A's context."""
    first = torch.zeros((a.m, a.k), dtype=torch.int32)
    length = torch.zeros((a.m, a.k), dtype=torch.int32)
    docs = a.doc.numpy()
    starts = a.start.numpy()
    for d in np.unique(docs[docs >= 0]):
        w = wins[int(d)]
        ea, eb = w.ends_a.numpy(), w.ends_b.numpy()
        js, ss = np.nonzero(docs == d)
        for j, s in zip(js, ss):
            lo = int(starts[j, s])
            hi = min(lo + a.window, len(ea))
            prev = ea[:lo][ea[:lo] >= 0]
            c_lo = int(prev.max()) if len(prev) else -1
            seg = ea[lo:hi][ea[lo:hi] >= 0]
            if not len(seg):
                continue
            c_hi = int(seg.max())
            inside = np.nonzero((eb > c_lo) & (eb <= c_hi))[0]
            if len(inside):
                first[j, s] = int(inside[0])
                length[j, s] = min(int(inside[-1]) - int(inside[0]) + 1, width)
    return first, length


def save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run_pass(side: str, adapter: Any, sae: Any, layer: int, wins: list, state_path: Path, settings: dict,
             log: Callable[[str], None] = print, progress: bool = True,
             cross: tuple[TopK, torch.Tensor, torch.Tensor] | None = None) -> TopK:
    """Stream ``wins`` through ``adapter`` and ``sae`` (side ``"a"`` or ``"b"``), resuming from
    ``state_path`` when it holds a checkpoint with the same ``settings``. ``cross`` (B pass only):
    A's final state and its :func:`cross_ranges`."""
    m = int(sae.cfg.d_sae)
    k, W, chunk, every = settings["top_k"], settings["window"], settings["chunk"], settings["checkpoint"]
    width = settings["cross_width"] if cross is not None else 0
    st = None
    if state_path.exists():
        try:
            saved = torch.load(state_path, weights_only=False)
        except Exception:  # an unreadable checkpoint cannot be trusted: start the pass over
            saved = None
        if saved and _same(saved.get("settings") or {}, settings):
            st = TopK.from_state(saved["state"])
            if saved.get("done"):
                log(f"pass {side.upper()}: finished earlier ({st.next_doc} documents); reused")
                return st
            log(f"pass {side.upper()}: resuming at document {st.next_doc} of {len(wins)}")
        elif saved:
            log(f"pass {side.upper()}: settings changed since the checkpoint; starting over")
    if st is None:
        st = TopK(m, k, W, width)
    ids_of = (lambda w: (w.ids_a, w.special_a)) if side == "a" else (lambda w: (w.ids_b, w.special_b))
    bar = None
    if progress:
        bar = progress_bar(total=len(wins), initial=st.next_doc, desc=f"browse pass {side.upper()}", unit="doc",
                           leave=False)
    since = 0
    while st.next_doc < len(wins):
        docs = list(range(st.next_doc, min(st.next_doc + chunk, len(wins))))
        mxs, starts, ctxs = [], [], []
        hs = _forward(adapter, [ids_of(wins[d])[0] for d in docs], layer)
        for d, h in zip(docs, hs):
            special = ids_of(wins[d])[1]
            f = codes(sae, h, special)
            st.n_tokens += int((~special).sum())
            mx, start, ctx = st.reduce(f)
            mxs.append(mx), starts.append(start), ctxs.append(ctx)
            if cross is not None:
                _cross_doc(st, cross, d, f)
        st.merge(docs, torch.stack(mxs), torch.stack(starts), torch.stack(ctxs))
        st.next_doc = docs[-1] + 1
        st.computed += len(docs)
        since += len(docs)
        if bar is not None:
            bar.update(len(docs))
        if since >= every and st.next_doc < len(wins):
            save_atomic({"settings": settings, "state": st.state(), "done": False}, state_path)
            since = 0
    if bar is not None:
        bar.close()
    save_atomic({"settings": settings, "state": st.state(), "done": True}, state_path)
    return st


def _same(a: dict, b: dict) -> bool:
    """Checkpoint settings match (how often checkpoints are written does not change the result)."""
    return {k: v for k, v in a.items() if k != "checkpoint"} == {k: v for k, v in b.items() if k != "checkpoint"}


def _cross_doc(st: TopK, cross: tuple, d: int, f: torch.Tensor) -> None:
    """B's activations over the B positions of A's top contexts that lie in document ``d``."""
    a, first, length = cross
    js, ss = (a.doc == d).nonzero(as_tuple=True)
    if not len(js):
        return
    width = st.cross.shape[-1]
    off = torch.arange(width)[None, :]
    idx = first[js, ss].long()[:, None] + off  # [E, width]
    ok = off < length[js, ss].long()[:, None]
    vals = f[idx.clamp(max=f.shape[0] - 1), js.long()[:, None]]
    vals[~ok] = float("nan")
    st.cross[js, ss] = vals.to(torch.float16)


def check_settings(settings: dict) -> None:
    for key in ("top_k", "window", "chunk", "checkpoint", "docs"):
        if int(settings[key]) < 1:
            raise StageError(f"browse setting {key} must be at least 1, not {settings[key]}")
