"""The step across arms: what an artifact kind's :meth:`~stitchplug.artifacts.ArtifactKind.aggregate`
computes from its arms' results, in one place for every kind (exported from :mod:`stitchplug.api`).

- :func:`bootstrap_mean`: a mean over groups (tasks) of per-example scores of one arm, or of its
  paired difference to another arm (a gap to the native or the random arm), with a percentile
  bootstrap interval that resamples each group's examples independently;
- :func:`relative_transfer_gap`: ``(native - transferred) / (native - none)`` clipped to [0, 1].
"""

from __future__ import annotations

import numpy as np


def bootstrap_mean(correct: list[np.ndarray], baseline: list[np.ndarray] | None = None, n_boot: int = 2000,
                   seed: int = 0, level: float = 0.95) -> dict:
    """Mean over tasks of the accuracy (minus ``baseline``'s, paired) with a percentile interval,
    resampling each task's test examples independently."""
    rng = np.random.default_rng(seed)
    diff = [c.astype(np.float64) - (baseline[i].astype(np.float64) if baseline is not None else 0.0)
            for i, c in enumerate(correct)]
    point = float(np.mean([d.mean() for d in diff]))
    boots = np.zeros(n_boot)
    for d in diff:
        idx = rng.integers(0, d.size, size=(n_boot, d.size))
        boots += d[idx].mean(1)
    boots /= len(diff)
    a = (1 - level) / 2
    return {"mean": point, "ci": [float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))],
            "n_tasks": len(diff)}


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
