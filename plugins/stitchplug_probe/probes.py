"""Linear probes: top-k selection by mean difference, L2 logistic regression, and their transfer.

A probe is a plain affine read-out ``score(x) = x[:, indices] @ coef + intercept`` on *raw* features
(``indices`` None: all features). Fitting standardises the selected features on the training split
(a scikit-learn ``StandardScaler``, then ``LogisticRegression`` with L2 and ``C=1`` as SAEBench) and
folds the scaler into ``coef``/``intercept``, so a fitted probe can be applied as is to features of
another model (the "no retrain" transfer) or pushed through an affine stitch (dense probes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stitchplug.api import StageError


@dataclass
class LinearProbe:
    coef: np.ndarray
    intercept: float
    indices: np.ndarray | None = None

    def score(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if self.indices is not None:
            X = X[:, self.indices]
        if X.shape[1] != self.coef.shape[0]:
            raise StageError(f"probe reads {self.coef.shape[0]} features but got {X.shape[1]}")
        return X @ self.coef + self.intercept

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.score(X) > 0).astype(np.int64)

    def to_dict(self) -> dict:
        return {"coef": self.coef.tolist(), "intercept": float(self.intercept),
                "indices": None if self.indices is None else self.indices.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "LinearProbe":
        idx = d.get("indices")
        return cls(np.asarray(d["coef"], dtype=np.float64), float(d["intercept"]),
                   None if idx is None else np.asarray(idx, dtype=np.int64))


def mean_diff(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``mean(X | y=1) - mean(X | y=0)`` per feature."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    return X[y == 1].mean(0) - X[y == 0].mean(0)


SELECTIONS = ("abs", "signed")


def top_k(X: np.ndarray, y: np.ndarray, k: int, selection: str = "abs") -> np.ndarray:
    """Indices of the ``k`` features with the largest class-mean difference (ties: lower index first).

    ``selection="abs"`` ranks by ``|mean(X|1) - mean(X|0)|`` (SAEBench's ``get_top_k_mean_diff_mask``):
    a latent that fires *less* on the positive class is as informative as one that fires more.
    ``"signed"`` ranks by the signed difference (only latents that fire more on class 1 first)."""
    if not 1 <= k <= X.shape[1]:
        raise StageError(f"k={k} must be between 1 and the number of features {X.shape[1]}")
    if selection not in SELECTIONS:
        raise StageError(f"unknown latent selection {selection!r} (known: {', '.join(SELECTIONS)})")
    d = mean_diff(X, y)
    return np.argsort(-(np.abs(d) if selection == "abs" else d), kind="stable")[:k].astype(np.int64)


def fit(X: np.ndarray, y: np.ndarray, indices: np.ndarray | None = None, C: float = 1.0,
        max_iter: int = 2000) -> LinearProbe:
    """Standardise, fit L2 logistic regression (lbfgs, deterministic), fold the scaler back in."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float64)
    Xs = X if indices is None else X[:, indices]
    scaler = StandardScaler().fit(Xs)
    clf = LogisticRegression(C=C, max_iter=max_iter, solver="lbfgs").fit(scaler.transform(Xs), y)
    w = clf.coef_[0] / scaler.scale_
    b = float(clf.intercept_[0] - (clf.coef_[0] * scaler.mean_ / scaler.scale_).sum())
    return LinearProbe(w, b, None if indices is None else np.asarray(indices, dtype=np.int64))


def through_affine(probe: LinearProbe, P: np.ndarray, b: np.ndarray) -> LinearProbe:
    """The dense probe on the other model: ``score(h @ P + b) = h @ (P @ w) + (b @ w + c)``.

    ``probe`` reads all features of the space ``P`` maps into (``P: [d_other, d_probe]``)."""
    if probe.indices is not None:
        raise StageError("only a dense probe (all features) can be pushed through an affine map")
    P, b = np.asarray(P, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return LinearProbe(P @ probe.coef, float(b @ probe.coef + probe.intercept), None)
