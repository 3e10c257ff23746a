"""One window type and one paired-windows module: :func:`first_window` (one window per text: the
probe's examples, the feature analysis) next to :func:`paired_windows` (whole documents)."""

from __future__ import annotations

import numpy as np

from stitchplug.api import Window, first_window, load_model, paired_windows
from stitchplug_models.tiny import TRAIN_TEXT

TEXTS = [TRAIN_TEXT[:120], TRAIN_TEXT[300:900], "", " ".join(TRAIN_TEXT.split()[:5])]


def _reference_ids(a, b, text, context_size):
    """The probe's paired ids before issue 23 (kept here to show the core function reads the same)."""
    import torch

    ea, eb = a.encode(text), b.encode(text)
    n_a = min(len(ea), context_size)
    cut = int(ea.ends[:n_a].max()) if n_a else -1
    inside = (eb.ends <= cut) | eb.special
    n_b = min(max(int(inside.long().cumprod(0).sum()), 1), context_size)
    return ea.ids[:n_a], eb.ids[:n_b]


def test_first_window_is_the_prefix_both_models_read(one_thread):
    a, b = load_model("tiny-llama-a"), load_model("tiny-gemma3")
    for text in TEXTS:
        for cs in (8, 32, 512):
            w = first_window(text, a, b, cs)
            ra, rb = _reference_ids(a, b, text, cs)
            assert isinstance(w, Window) and w.source.ids.equal(ra) and w.target.ids.equal(rb)
            assert len(w.source) <= cs and 1 <= len(w.target) <= cs
            for i, j in zip(w.idx_source, w.idx_target):  # aligned pairs end at the same character
                assert int(w.source.ends[i]) == int(w.target.ends[j]) >= 0


def test_window_unpacks_and_indexes_like_the_tuple(one_thread):
    a, b = load_model("tiny-llama-a"), load_model("tiny-gemma3")
    w = paired_windows(TRAIN_TEXT[:2000], a, b, 32)[0]
    ea, eb, ia, ib = w
    assert ea is w[0] is w.source and eb is w[1] and ia is w[2] and ib is w[3] and len(w) == 4
    assert isinstance(ia, np.ndarray) and ia.dtype == np.int64
