"""One task's probes on every arm (method.md section 4).

Sparse arms (per k): ``source_A`` (source SAE on A), ``transfer_noretrain`` (A's probe, its k indices
and weights, on the transferred SAE's latents on B), ``transfer_retrain`` (the same k indices refit on
B), ``transfer_reselect`` (top-k re-selected and fit on B's transferred latents), ``native_B`` (a
native SAE trained on B), ``random_B`` (a random SAE of the same shape on B), and the controls of
:mod:`~stitchplug_probe.controls`: ``random_unit_B`` (random unit encoder rows) and ``shuffled_B`` (the
native SAE with each latent's weights permuted across input dimensions).
Latents are ranked by the absolute class-mean difference (``selection="abs"``, SAEBench) or the signed
one (``"signed"``).
Dense arms: ``dense_A``, ``dense_B``, ``dense_Tdown_noretrain`` (A's dense probe on ``T_down(h_B)``,
i.e. pushed through the stitch) and ``dense_Tdown_retrain`` (refit on ``T_down(h_B)``).
A and B see the same examples; train/test is one stratified split from the seed.
"""

from __future__ import annotations

import numpy as np

from stitchplug.api import StageError

from . import probes
from .stats import summarise

SPARSE_ARMS = ("source_A", "transfer_noretrain", "transfer_retrain", "transfer_reselect", "native_B", "random_B",
               "random_unit_B", "shuffled_B")
B_CONTROLS = (("native_B", "native"), ("random_B", "random"), ("random_unit_B", "random_unit"), ("shuffled_B", "shuffled"))
DENSE_ARMS = ("dense_A", "dense_B", "dense_Tdown_noretrain", "dense_Tdown_retrain")
KS = (1, 2, 5, 10, 20, 50)


def split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
    return np.sort(tr), np.sort(te)


def _record(y_te: np.ndarray, score: np.ndarray) -> dict:
    out = summarise(y_te, score)
    out["correct"] = ((score > 0).astype(np.int64) == y_te).astype(np.int8)
    return out


def run_task(feats: dict[str, dict[str, np.ndarray]], y: np.ndarray, *, P_down: np.ndarray, b_down: np.ndarray,
             ks=KS, test_fraction: float = 0.3, seed: int = 0, C: float = 1.0, selection: str = "abs") -> dict:
    """Fit and evaluate every arm whose features are present.

    ``feats["A"]`` holds ``dense`` and ``source``; ``feats["B"]`` holds ``dense``, ``transferred`` and
    optionally ``native``, ``random``, ``random_unit`` and ``shuffled``. Returns ``{"sparse": {arm: {k: rec}}, "dense": {arm: rec},
    "probes_A": {...}}`` where ``rec`` has accuracy, Wilson ci, auc, n_test and the per-example
    ``correct`` vector (int8).
    """
    y = np.asarray(y, dtype=np.int64)
    tr, te = split(y, test_fraction, seed)
    if len(np.unique(y[tr])) < 2 or len(np.unique(y[te])) < 2:
        raise StageError("a train or test split has a single class; use more examples")
    A, B = feats["A"], feats["B"]
    sparse: dict[str, dict[int, dict]] = {a: {} for a in SPARSE_ARMS}
    saved: dict = {"sparse": {}, "dense": None}
    width = A["source"].shape[1]
    for k in ks:
        if k > width:
            continue
        sel = probes.top_k(A["source"][tr], y[tr], k, selection)
        pA = probes.fit(A["source"][tr], y[tr], sel, C)
        saved["sparse"][k] = pA.to_dict()
        sparse["source_A"][k] = _record(y[te], pA.score(A["source"][te]))
        XB = B["transferred"]
        sparse["transfer_noretrain"][k] = _record(y[te], pA.score(XB[te]))
        sparse["transfer_retrain"][k] = _record(y[te], probes.fit(XB[tr], y[tr], sel, C).score(XB[te]))
        re = probes.top_k(XB[tr], y[tr], k, selection)
        sparse["transfer_reselect"][k] = _record(y[te], probes.fit(XB[tr], y[tr], re, C).score(XB[te]))
        for arm, key in B_CONTROLS:
            if key in B and k <= B[key].shape[1]:
                s = probes.top_k(B[key][tr], y[tr], k, selection)
                sparse[arm][k] = _record(y[te], probes.fit(B[key][tr], y[tr], s, C).score(B[key][te]))
    dense: dict[str, dict] = {}
    dA = probes.fit(A["dense"][tr], y[tr], None, C)
    saved["dense"] = dA.to_dict()
    dense["dense_A"] = _record(y[te], dA.score(A["dense"][te]))
    dense["dense_B"] = _record(y[te], probes.fit(B["dense"][tr], y[tr], None, C).score(B["dense"][te]))
    moved = probes.through_affine(dA, P_down, b_down)
    dense["dense_Tdown_noretrain"] = _record(y[te], moved.score(B["dense"][te]))
    T = B["dense"] @ np.asarray(P_down, dtype=np.float64) + np.asarray(b_down, dtype=np.float64)
    dense["dense_Tdown_retrain"] = _record(y[te], probes.fit(T[tr], y[tr], None, C).score(T[te]))
    sparse = {a: v for a, v in sparse.items() if v}
    return {"sparse": sparse, "dense": dense, "probes_A": saved, "n_train": int(len(tr)), "n_test": int(len(te))}


def strip_correct(res: dict) -> dict:
    """``res`` without the per-example vectors (for metrics.json)."""
    out = {"sparse": {a: {str(k): {x: v for x, v in r.items() if x != "correct"} for k, r in by_k.items()}
                      for a, by_k in res["sparse"].items()},
           "dense": {a: {x: v for x, v in r.items() if x != "correct"} for a, r in res["dense"].items()}}
    out.update({k: res[k] for k in ("n_train", "n_test") if k in res})
    return out
