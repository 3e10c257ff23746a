"""Curve analysis for the init experiment: threshold crossings, FLOPs savings, the compute frontier
over widths, and the power-law fit ``L(C) = a * C^-beta`` of paper Table 4.

Everything here works on plain sequences of numbers, so it is testable on hand-made curves.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

DEFAULT_THRESHOLDS = (0.70, 0.75, 0.80, 0.85, 0.90)


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average: entry i averages ``values[max(0, i-window+1) : i+1]``."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or v.size == 0:
        return v.copy()
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(v.size)
    lo = np.maximum(0, idx - window + 1)
    return (c[idx + 1] - c[lo]) / (idx + 1 - lo)


def first_crossing(flops: Sequence[float], ev: Sequence[float], threshold: float,
                   window: int = 1) -> float | None:
    """FLOPs at the first logged point where the moving average of explained variance reaches
    ``threshold``; ``None`` if it never does."""
    ma = moving_average(ev, window)
    hit = np.nonzero(ma >= threshold)[0]
    return float(np.asarray(flops, dtype=float)[hit[0]]) if hit.size else None


def savings(scratch_flops: float | None, stitched_flops: float | None) -> float | None:
    """``(scratch - stitched) / scratch``; ``None`` when either arm never crossed."""
    if scratch_flops is None or stitched_flops is None or scratch_flops <= 0:
        return None
    return (scratch_flops - stitched_flops) / scratch_flops


def savings_table(scratch: dict, stitched: dict, thresholds: Iterable[float],
                  scratch_budget: float | None = None, offset: float | None = None) -> dict:
    """Per threshold: FLOPs of each arm at its first crossing and the savings (keys are ``f"{t:.2f}"``).

    When only the stitched arm crossed and the scratch arm's whole budget is given, ``savings_at_least``
    is the lower bound ``(budget - stitched) / budget`` (scratch would need more than its budget).
    With ``offset`` (the stitch's FLOPs, already inside ``stitched``) each row also has
    ``savings_excl_offset`` and ``savings_at_least_excl_offset``: the same with the offset left out,
    and ``offset_share``, the offset over scratch's FLOPs at that crossing.
    """
    out = {}
    for t in thresholds:
        key = f"{t:.2f}"
        s, w = scratch.get(key), stitched.get(key)

        def at_least(flops: float | None) -> float | None:
            return savings(scratch_budget, flops) if s is None and flops is not None and scratch_budget else None

        row = {"scratch_flops": s, "stitched_flops": w, "savings": savings(s, w), "savings_at_least": at_least(w)}
        if offset is not None:
            bare = None if w is None else w - offset
            row["savings_excl_offset"] = savings(s, bare)
            row["savings_at_least_excl_offset"] = at_least(bare)
            row["offset_share"] = None if not s else offset / s
        out[key] = row
    return out


def best_so_far(flops: Sequence[float], loss: Sequence[float], grid: np.ndarray) -> np.ndarray:
    """Lowest loss reached by each compute value of ``grid`` (``nan`` before the first logged point)."""
    f = np.asarray(flops, dtype=float)
    running = np.minimum.accumulate(np.asarray(loss, dtype=float))
    idx = np.searchsorted(f, grid, side="right") - 1
    out = np.full(grid.shape, np.nan)
    ok = idx >= 0
    out[ok] = running[idx[ok]]
    return out


def frontier(curves: Sequence[tuple[Sequence[float], Sequence[float]]], n_grid: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Lower envelope over widths of loss vs compute.

    ``curves`` holds one ``(flops, loss)`` pair per width (flops increasing). The grid is log-spaced
    from the smallest positive compute any curve logged to the largest; at each grid point the
    frontier is the lowest loss any width reached with at most that compute.
    """
    pos = [np.asarray(f, dtype=float)[np.asarray(f, dtype=float) > 0] for f, _ in curves]
    pos = [p for p in pos if p.size]
    if not pos:
        return np.array([]), np.array([])
    lo = min(p.min() for p in pos)
    hi = max(p.max() for p in pos)
    grid = np.geomspace(lo, hi, n_grid) if hi > lo else np.array([lo])
    stack = np.vstack([best_so_far(f, loss, grid) for f, loss in curves])
    with np.errstate(all="ignore"):
        env = np.nanmin(np.where(np.isnan(stack), np.inf, stack), axis=0)
    env[np.isinf(env)] = np.nan
    return grid, env


def fit_power_law(compute: Sequence[float], loss: Sequence[float]) -> dict:
    """Least-squares fit of ``log L = log a - beta log C`` on the finite, positive points.

    Returns ``{"a", "beta", "r2", "n_points"}`` (``a``/``beta`` ``None`` with fewer than 2 points).
    """
    c = np.asarray(compute, dtype=float)
    y = np.asarray(loss, dtype=float)
    ok = np.isfinite(c) & np.isfinite(y) & (c > 0) & (y > 0)
    c, y = np.log(c[ok]), np.log(y[ok])
    if c.size < 2 or np.ptp(c) == 0:
        return {"a": None, "beta": None, "r2": None, "n_points": int(c.size)}
    slope, intercept = np.polyfit(c, y, 1)
    pred = intercept + slope * c
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"a": float(np.exp(intercept)), "beta": float(-slope), "r2": r2, "n_points": int(c.size)}
