"""Batch sources: how the fitters see activations, in memory or from the paired cache.

A *batch source* is a zero-argument callable returning a fresh iterator over one epoch of
``(hA [n, dA], hB [n, dB])`` float32 tensor pairs (aligned token positions). Calling it again starts
the next epoch (sources that shuffle reshuffle with a new seed). ``source.n_tokens`` is set when known.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterable, Iterator

import torch

Batch = tuple[torch.Tensor, torch.Tensor]
BatchSource = Callable[[], Iterable[Batch]]


class TensorSource:
    """Batches of two in-memory tensors ``hA [N, dA]`` and ``hB [N, dB]`` (rows aligned)."""

    def __init__(self, hA: torch.Tensor, hB: torch.Tensor, batch_size: int, shuffle: bool = True, seed: int = 0):
        if hA.shape[0] != hB.shape[0]:
            raise ValueError(f"hA has {hA.shape[0]} rows, hB {hB.shape[0]}")
        self.hA, self.hB = hA.float(), hB.float()
        self.batch_size, self.shuffle = int(batch_size), shuffle
        self.seeds = itertools.count(seed)
        self.n_tokens = int(hA.shape[0])

    def __call__(self) -> Iterator[Batch]:
        n = self.n_tokens
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(next(self.seeds)))
        else:
            order = torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.hA[idx], self.hB[idx]


class CacheSource:
    """Batches of (source layer lA, target layer lB) from a paired activation cache.

    ``part=(rank, world_size)``: this rank's rows of each global batch (see ``PairedCache.batches``);
    ``n_tokens`` stays the global count, so every rank plans the same number of steps."""

    def __init__(self, cache, source_layer: int, target_layer: int, batch_size: int, split: str = "train",
                 shuffle: bool = True, seed: int = 0, part: tuple[int, int] | None = None):
        self.cache, self.lA, self.lB, self.part = cache, int(source_layer), int(target_layer), part
        self.batch_size, self.split, self.shuffle = int(batch_size), split, shuffle
        self.seeds = itertools.count(seed)
        try:
            self.n_tokens = int(sum(b - a for a, b in cache.ranges(split)))
        except Exception:  # a reader without row ranges: the fitters count when needed
            self.n_tokens = None

    def __call__(self) -> Iterator[Batch]:
        it = self.cache.batches(keys=[("source", self.lA), ("target", self.lB)], batch_size=self.batch_size,
                                split=self.split, seed=next(self.seeds), shuffle=self.shuffle, epochs=1,
                                dtype=torch.float32, part=self.part)
        for hA, hB in it:
            yield torch.as_tensor(hA).float(), torch.as_tensor(hB).float()


class FirstBatches:
    """At most the first ``n_batches`` batches of each pass of ``source`` (whole batches, so every
    torchrun rank, reading its share of the same global batches, stops at the same step).
    ``n_tokens``: the global tokens read per pass, when ``source`` knows its own."""

    def __init__(self, source: BatchSource, n_batches: int, batch_size: int):
        self.source, self.n_batches = source, int(n_batches)
        total = getattr(source, "n_tokens", None)
        self.n_tokens = None if total is None else min(int(total), self.n_batches * int(batch_size))

    def __call__(self) -> Iterator[Batch]:
        return itertools.islice(self.source(), self.n_batches)


def limit_tokens(source: BatchSource, fit_tokens: int | None, batch_size: int) -> BatchSource:
    """``source`` itself when ``fit_tokens`` is None, else its first ``ceil(fit_tokens / batch_size)``
    batches of every pass (:class:`FirstBatches`)."""
    if fit_tokens is None:
        return source
    if fit_tokens < 1:
        raise ValueError(f"fit_tokens must be positive, not {fit_tokens}")
    return FirstBatches(source, -(-int(fit_tokens) // int(batch_size)), batch_size)


def count_tokens(source: BatchSource) -> int:
    """``source.n_tokens`` if known, else one pass over the source."""
    n = getattr(source, "n_tokens", None)
    if n is not None:
        return int(n)
    return sum(int(a.shape[0]) for a, _ in source())


def take_tokens(source: BatchSource, n: int) -> Batch:
    """The first ``n`` rows of one epoch of ``source``, concatenated."""
    got_a, got_b, have = [], [], 0
    for a, b in source():
        got_a.append(a)
        got_b.append(b)
        have += a.shape[0]
        if have >= n:
            break
    if not got_a:
        raise ValueError("the batch source is empty")
    return torch.cat(got_a)[:n], torch.cat(got_b)[:n]
