"""Split a document into context windows consistently for two models, and align each window.

:func:`paired_windows` covers a whole document (the cache, held-out losses); :func:`first_window`
is one window per text (its first ``context_size`` tokens of A; the probe's examples, the feature
analysis). Both return :class:`Window`, the one window type.

Windows are cut on the *source* tokenisation (before whitespace where possible, so no word is split):
every window holds at most ``context_size`` source tokens (special tokens included), covers a character span of the document, and both models
tokenise exactly that span (each adds its own BOS as its adapter decides). The target side is
truncated only if it exceeds the target model's own context length. End offsets in the returned
:class:`Window` are relative to the whole document (``-1`` for special tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..adapter import Encoded, ModelAdapter
from .align import Aligner, get_aligner


@dataclass
class Window:
    """One context window: both tokenisations and the aligned position pairs."""

    source: Encoded
    target: Encoded
    idx_source: np.ndarray
    idx_target: np.ndarray
    start: int
    """Character span ``text[start:end]`` this window covers."""
    end: int

    def __iter__(self):  # unpacks as (enc_a, enc_b, idx_a, idx_b)
        return iter((self.source, self.target, self.idx_source, self.idx_target))

    def __getitem__(self, i: int):  # and indexes like that tuple
        return (self.source, self.target, self.idx_source, self.idx_target)[i]

    def __len__(self) -> int:
        return 4


def max_context(adapter: ModelAdapter) -> int | None:
    """The model's maximum sequence length, if the adapter exposes one."""
    n = getattr(adapter, "n_ctx", None)
    if n is None:
        cfg = getattr(getattr(adapter, "model", None), "cfg", None)
        n = getattr(cfg, "n_ctx", None)
    return int(n) if n else None


def _cut(enc: Encoded, n: int | None, offset: int) -> Encoded:
    ids, ends, special = enc.ids, enc.ends, enc.special
    if n is not None and len(ids) > n:
        ids, ends, special = ids[:n], ends[:n], special[:n]
    ends = torch.where(ends >= 0, ends + offset, ends)
    return Encoded(ids, ends, special)


def _aligner(aligner: Aligner | str | None, source: ModelAdapter, target: ModelAdapter) -> Aligner:
    if aligner is None or isinstance(aligner, str):
        return get_aligner(aligner or "auto", source, target)[1]
    return aligner


def paired_windows(text: str, source: ModelAdapter, target: ModelAdapter, context_size: int,
                   aligner: Aligner | str | None = None) -> list[Window]:
    """``text`` as context windows for both models, with aligned index pairs per window.

    ``aligner`` is an aligner function or a name for :func:`~stitchplug.cache.align.get_aligner`
    (default ``"auto"``: identity for the same tokenizer, end offsets otherwise; the run's
    ``cache.aligner``). Returns ``[]`` for text without tokens.
    Each window unpacks as ``(enc_source, enc_target, idx_source, idx_target)``.
    """
    aligner = _aligner(aligner, source, target)
    full = source.encode(text)
    ends = full.ends.numpy()
    real = np.flatnonzero(ends >= 0)
    if len(real) == 0:
        return []
    n_prefix = int(np.argmax(ends >= 0))  # BOS and other specials the adapter prepends
    per = max(1, context_size - n_prefix)
    target_ctx = max_context(target)
    windows = []
    k = 0
    while k < len(real):
        j = min(k + per, len(real)) - 1  # last source token of this window
        if j < len(real) - 1:  # prefer cutting before whitespace, so no word is split between windows
            lo = k + per // 2
            while j > lo and not text[int(ends[real[j]]):int(ends[real[j]]) + 1].isspace():
                j -= 1
            if not text[int(ends[real[j]]):int(ends[real[j]]) + 1].isspace():
                j = min(k + per, len(real)) - 1
        start = 0 if k == 0 else int(ends[real[k - 1]])
        end = len(text) if j == len(real) - 1 else int(ends[real[j]])
        span = text[start:end]
        full_a = source.encode(span)
        enc_a = _cut(full_a, context_size, start)
        if target is source and len(full_a) <= min(context_size, target_ctx or context_size):
            enc_b = enc_a  # the same adapter on both sides (self-pairs), nothing cut: encode the window once
        else:
            enc_b = _cut(target.encode(span), target_ctx, start)
        ia, ib = aligner(enc_a.ends.numpy(), enc_b.ends.numpy())
        windows.append(Window(enc_a, enc_b, np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64),
                              start, end))
        k = j + 1
    return windows


def first_window(text: str, source: ModelAdapter, target: ModelAdapter, context_size: int,
                 aligner: Aligner | str | None = None) -> Window:
    """The first window of ``text``: A's first ``context_size`` tokens (special tokens included) and
    B's longest prefix of tokens (specials included) that ends within the same characters, at least
    one token and at most ``context_size``; positions aligned with ``aligner`` (a function or a name,
    as in :func:`paired_windows`).
    The window covers ``text[0:end]``; ``idx_source`` is empty for text without tokens."""
    aligner = _aligner(aligner, source, target)
    ea, eb = source.encode(text), target.encode(text)
    n_a = min(len(ea), context_size)
    enc_a = Encoded(ea.ids[:n_a], ea.ends[:n_a], ea.special[:n_a])
    cut = int(enc_a.ends.max()) if n_a else -1
    inside = (eb.ends <= cut) | eb.special
    n_b = min(max(int(inside.long().cumprod(0).sum()), 1), context_size)  # the prefix within A's text
    enc_b = Encoded(eb.ids[:n_b], eb.ends[:n_b], eb.special[:n_b])
    ia, ib = aligner(enc_a.ends.numpy(), enc_b.ends.numpy())
    return Window(enc_a, enc_b, np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64), 0, max(cut, 0))
