"""Token alignment between two tokenisations of the same text.

Both aligners take the character end offsets of each side's tokens (``-1`` marks special tokens,
which are never kept) and return index arrays ``(idx_a, idx_b)`` of equal length: position
``idx_a[i]`` of side A is paired with position ``idx_b[i]`` of side B.

They are registered as aligners ``end-offsets`` and ``identity`` by the first-party corpora plugin
(the ``register_aligners`` hook), so a plugin can add better ones; :func:`get_aligner` falls back to
the built-in functions when no plugin provides them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import CacheError

Aligner = Callable[[Sequence[int], Sequence[int]], tuple[np.ndarray, np.ndarray]]


def _last_per_end(ends) -> tuple[np.ndarray, np.ndarray]:
    """Distinct non-negative end offsets (sorted) and the index of the LAST token with each.

    Byte-level tokenisers split a multi-byte character into several tokens that all report the
    character's end; only the last of them has read the whole character, so it is the one kept.
    """
    ends = np.asarray(ends, dtype=np.int64).reshape(-1)
    rev = ends[::-1]
    uniq, first_in_rev = np.unique(rev, return_index=True)
    idx = len(ends) - 1 - first_in_rev
    keep = uniq >= 0
    return uniq[keep], idx[keep]


def align_by_end_offsets(ends_a, ends_b) -> tuple[np.ndarray, np.ndarray]:
    """Pair tokens of A and B that end at the same character offset of the same text.

    Returns ``(idx_a, idx_b)`` (int64, increasing). Special tokens (end ``-1``) are never paired;
    when several tokens of one side share an end offset, the last one is used.
    """
    ua, ia = _last_per_end(ends_a)
    ub, ib = _last_per_end(ends_b)
    _, pa, pb = np.intersect1d(ua, ub, assume_unique=True, return_indices=True)
    return ia[pa].astype(np.int64), ib[pb].astype(np.int64)


def align_identity(ends_a, ends_b) -> tuple[np.ndarray, np.ndarray]:
    """Same tokenizer: pair the k-th non-special token of A with the k-th of B.

    Robust to the two models handling BOS differently; raises :class:`CacheError` when the two
    sides do not hold the same number of non-special tokens (i.e. the tokenizers differ after all).
    """
    ea = np.asarray(ends_a, dtype=np.int64).reshape(-1)
    eb = np.asarray(ends_b, dtype=np.int64).reshape(-1)
    ia = np.flatnonzero(ea >= 0)
    ib = np.flatnonzero(eb >= 0)
    if len(ia) != len(ib) or not np.array_equal(ea[ia], eb[ib]):
        raise CacheError("identity alignment needs identical tokenisations, but the two sides differ; "
                         "use the 'end-offsets' aligner")
    return ia, ib


BUILTIN: dict[str, Aligner] = {"end-offsets": align_by_end_offsets, "identity": align_identity}


def fingerprint(adapter) -> str:
    """``adapter.tokenizer_fingerprint()``, memoised on the adapter (hashing a big vocab is slow)."""
    fp = getattr(adapter, "_stitchplug_fingerprint", None)
    if fp is None:
        fp = adapter.tokenizer_fingerprint()
        try:
            adapter._stitchplug_fingerprint = fp
        except AttributeError:
            pass
    return fp


def get_aligner(method: str = "auto", source=None, target=None) -> tuple[str, Aligner]:
    """The aligner to use for a model pair: ``(method_name, align_fn)``.

    ``method="auto"`` picks ``identity`` when both adapters have the same
    ``tokenizer_fingerprint()`` (memoised: :func:`fingerprint`) and ``end-offsets`` otherwise. Names are looked up in the plugin
    registry first (kind ``aligners``), then among the built-in ones.
    """
    if method == "auto":
        if source is None or target is None:
            raise CacheError("aligner 'auto' needs both model adapters")
        method = "identity" if fingerprint(source) == fingerprint(target) else "end-offsets"
    try:
        from ..plugins import registry

        table = registry().entries["aligners"]
        if method in table:
            return method, table[method].factory()
        known = sorted(set(table) | set(BUILTIN))
    except Exception:  # registry unavailable: built-ins only
        known = sorted(BUILTIN)
    if method in BUILTIN:
        return method, BUILTIN[method]
    raise CacheError(f"unknown aligner {method!r} (known: {', '.join(known)})")
