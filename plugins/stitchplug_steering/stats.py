"""Shares with exact (Clopper-Pearson) intervals and the relative transfer gap."""

from __future__ import annotations

from scipy.stats import binomtest

from stitchplug.api import relative_transfer_gap  # noqa: F401  (the core's step across arms)


def share(k: int, n: int, confidence: float = 0.95) -> dict:
    """``k`` of ``n`` with the exact two-sided Clopper-Pearson interval (scipy)."""
    if n <= 0:
        return {"k": int(k), "n": 0, "share": None, "ci_low": None, "ci_high": None}
    if not 0 <= k <= n:
        raise ValueError(f"share: k={k} outside 0..{n}")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return {"k": int(k), "n": int(n), "share": k / n, "ci_low": float(ci.low), "ci_high": float(ci.high)}
