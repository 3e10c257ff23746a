"""Accuracy, AUC and 95% intervals: Wilson per task and arm, bootstrap over test examples for means
over tasks and for transfer gaps (paired: the same resampled examples for both arms)."""

from __future__ import annotations

import numpy as np


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
