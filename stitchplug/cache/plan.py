"""What a cache run computes: documents -> windows -> shards -> forward batches.

Everything here depends only on the configuration and the corpus (never on the world size, the
layers cached or whether a probe ran first), which is what makes a cache bit-identical across
resumes, ranks and layer selections: the same window always sits in the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..adapter import ModelAdapter
from .windows import Window, paired_windows

FORWARD_STATS = {"positions": 0, "tokens": 0}
"""Positions run through the models (padding included) and real tokens, summed over this process's
cache forwards; ``positions / tokens`` is the padding overhead (``bench/cache.py`` reports it)."""

Acts = dict[int, np.ndarray]
"""One window's residuals: ``{layer: [len, d]}`` (float32)."""


@dataclass
class Doc:
    index: int
    key: str
    windows: list[Window]
    rows: int  # aligned rows kept (after a final truncation to the token budget)
    real: tuple[int, int] = (0, 0)  # non-special tokens per side, for the alignment rate
    aligned: int = 0  # aligned pairs before truncation

    def kept(self) -> list[int]:
        """Rows kept from each window (the budget cuts the last one short)."""
        out, left = [], self.rows
        for w in self.windows:
            n = min(len(w.idx_source), left)
            out.append(n)
            left -= n
        return out


@dataclass
class Shard:
    docs: list[Doc] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(d.rows for d in self.docs)

    def windows(self) -> list[tuple[Doc, Window, int]]:
        """``(doc, window, rows kept)`` in row order (the order the shard stores them)."""
        return [(d, w, n) for d in self.docs for w, n in zip(d.windows, d.kept())]


def _windows_for(wins: list[Window], rows: int) -> list[Window]:
    """The leading windows that supply the first ``rows`` aligned rows (the rest would be cut anyway)."""
    kept, have = [], 0
    for w in wins:
        if have >= rows:
            break
        kept.append(w)
        have += len(w.idx_source)
    return kept


def plan_docs(records: Iterable[dict], source: ModelAdapter, target: ModelAdapter, context_size: int, align,
              *, tokens: int, total: int = 0, index0: int = 0) -> Iterator[Doc]:
    """Window each corpus record into a :class:`Doc` until ``tokens`` aligned rows (``total`` already
    cached before ``records``); document ``i`` of ``records`` gets index ``index0 + i``."""
    for i, rec in enumerate(records):
        if total >= tokens:
            return
        wins = paired_windows(rec["text"], source, target, context_size, aligner=align)
        aligned = sum(len(w.idx_source) for w in wins)
        real = (sum(int((w.source.ends >= 0).sum()) for w in wins),
                sum(int((w.target.ends >= 0).sum()) for w in wins))
        rows = min(aligned, tokens - total)
        yield Doc(index0 + i, str(rec["doc_id"]), _windows_for(wins, rows), rows, real, aligned)
        total += rows


def group_shards(docs: Iterable[Doc], shard_rows: int) -> Iterator[Shard]:
    """Whole documents into shards of at least ``shard_rows`` rows (the last may be smaller)."""
    shard = Shard()
    for d in docs:
        shard.docs.append(d)
        if shard.rows >= shard_rows:
            yield shard
            shard = Shard()
    if shard.docs:
        yield shard


def batches(encs: list, batch_size: int) -> list[list[int]]:
    """Window indices per forward batch: sorted by length (longest first, stable), ``batch_size`` each."""
    order = sorted(range(len(encs)), key=lambda i: -len(encs[i]))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


class _Pending:
    """One launched batch: its residuals on their way to host memory (:func:`launch_batch`)."""

    def __init__(self, encs: list, chunk: list[int], host: dict[int, torch.Tensor], event=None):
        self.encs, self.chunk, self.host, self.event = encs, chunk, host, event

    def result(self) -> dict[int, Acts]:
        if self.event is not None:
            self.event.synchronize()  # the non-blocking copies into pinned memory are done
        acts = {l: a.numpy() for l, a in self.host.items()}
        return {i: {l: a[r, :len(self.encs[i])] for l, a in acts.items()} for r, i in enumerate(self.chunk)}


def launch_batch(adapter: ModelAdapter, encs: list, chunk: list[int], layers: list[int]) -> _Pending:
    """Start one right-padded batch; ``.result()`` gives ``{window index: {layer: [len, d]}}``.

    On CUDA the residuals are copied into pinned host memory with ``non_blocking`` copies and
    ``.result()`` waits for them, so the caller can launch the next batch's forward first and the GPU
    never waits for the host; elsewhere the copy is synchronous. Either way the values are those of
    ``a.float().cpu()`` bit for bit."""
    width = max(len(encs[i]) for i in chunk)
    FORWARD_STATS["positions"] += width * len(chunk)
    FORWARD_STATS["tokens"] += sum(len(encs[i]) for i in chunk)
    ids = torch.zeros((len(chunk), width), dtype=torch.long)
    for r, i in enumerate(chunk):
        ids[r, :len(encs[i])] = encs[i].ids
    with torch.inference_mode():
        out = adapter.capture(ids, layers)
        if not all(a.is_cuda for a in out.values()):
            return _Pending(encs, chunk, {l: a.float().cpu() for l, a in out.items()})
        host = {}
        for l, a in out.items():
            host[l] = torch.empty(a.shape, dtype=torch.float32, pin_memory=True)
            host[l].copy_(a.float(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
    return _Pending(encs, chunk, host, event)


def run_batch(adapter: ModelAdapter, encs: list, chunk: list[int], layers: list[int]) -> dict[int, Acts]:
    """One right-padded batch: ``{window index: {layer: [len, d]}}``; causal attention keeps the
    padding invisible to the real positions, the only ones returned."""
    return launch_batch(adapter, encs, chunk, layers).result()


def forward(adapter: ModelAdapter, encs: list, layers: list[int], batch_size: int, tick: Callable[[float], None],
            ready: dict[int, Acts] | None = None) -> list[Acts]:
    """Residuals at ``layers`` for each encoded window, batched by :func:`batches`.

    ``ready`` holds windows an earlier pass computed in these same batches (the layer probe): a batch
    whose windows are all there is not run again.
    """
    ready = ready or {}
    out: list[Acts | None] = [None] * len(encs)

    def finish(chunk, got) -> None:
        for i, acts in (got.result() if isinstance(got, _Pending) else got).items():
            out[i] = acts
        tick(sum(len(encs[i]) for i in chunk))

    prev = None  # batch i is collected after batch i + 1 is launched (on CUDA the GPU stays busy)
    for chunk in batches(encs, batch_size):
        if all(i in ready for i in chunk):
            cur = (chunk, {i: {l: ready[i][l] for l in layers} for i in chunk})
        else:
            cur = (chunk, launch_batch(adapter, encs, chunk, layers))
        if prev is not None:
            finish(*prev)
        prev = cur
    if prev is not None:
        finish(*prev)
    return out
