"""Shares with exact (Clopper-Pearson) intervals and the relative transfer gap."""

from __future__ import annotations

from scipy.stats import binomtest


def share(k: int, n: int, confidence: float = 0.95) -> dict:
    """``k`` of ``n`` with the exact two-sided Clopper-Pearson interval (scipy)."""
    if n <= 0:
        return {"k": int(k), "n": 0, "share": None, "ci_low": None, "ci_high": None}
    if not 0 <= k <= n:
        raise ValueError(f"share: k={k} outside 0..{n}")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return {"k": int(k), "n": int(n), "share": k / n, "ci_low": float(ci.low), "ci_high": float(ci.high)}


def relative_transfer_gap(native: float | None, transferred: float | None, none: float = 0.0) -> float | None:
    """``(native - transferred) / (native - none)`` clipped to [0, 1]: 0 = the transferred vector
    steers as well as the native one, 1 = no better than no steering. ``None`` when the native
    vector does not beat no steering (the gap is then undefined)."""
    if native is None or transferred is None:
        return None
    denom = native - none
    if denom <= 0:
        return None
    return min(1.0, max(0.0, (native - transferred) / denom))
