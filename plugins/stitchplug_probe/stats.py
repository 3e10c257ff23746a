"""Accuracy, AUC and 95% intervals: Wilson per task and arm, bootstrap over test examples for means
over tasks and for transfer gaps (paired: the same resampled examples for both arms)."""

from __future__ import annotations

import numpy as np

from stitchplug.api import bootstrap_mean  # noqa: F401  (the core's step across arms)


def wilson(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import binomtest

    if n == 0:
        return (float("nan"), float("nan"))
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return (float(ci.low), float(ci.high))


def auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def summarise(y: np.ndarray, score: np.ndarray) -> dict:
    """Accuracy (threshold 0) with its Wilson interval and AUC for one arm on one task."""
    correct = (score > 0).astype(np.int64) == np.asarray(y)
    k, n = int(correct.sum()), int(correct.size)
    lo, hi = wilson(k, n)
    return {"accuracy": k / n, "ci": [lo, hi], "auc": auc(y, score), "n_test": n}
