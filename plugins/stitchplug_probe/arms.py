"""The probe arms (method.md section 4): what each pipeline arm's probes read, how they are fitted on a
task's training examples and scored on its test examples.

Every arm is a *probe set* (the kind's artifact: per task, sparse probes per k and/or a dense probe)
read on one model. :data:`ARMS` maps each pipeline arm to what its probes read and to the names its
results keep in the per-task tables (``source_A``, ``transfer_noretrain``, ...):

- ``source_on_A``: A's probes on the source SAE's latents (``source_A``) and on A's residual (``dense_A``);
- ``transferred_on_B``: the same probes moved to B: the sparse ones keep their latent indices and
  weights and read the transferred SAE (``transfer_noretrain``); the dense one is composed with
  ``T_down`` (``dense_Tdown_noretrain``);
- fitted on B's training examples (:meth:`~stitchplug_probe.artifact.ProbeArtifact.extra_arms`):
  ``retrained_on_B`` (A's latent indices refit on the transferred latents, ``transfer_retrain``; a
  dense probe refit on ``T_down(h_B)``, ``dense_Tdown_retrain``), ``reselected_on_B`` (top-k
  re-selected on the transferred latents), ``residual_on_B`` (a dense probe on B, ``dense_B``),
  ``native_on_B`` (a native SAE trained on B), ``random_on_B`` (a random SAE of the same shape) and
  the controls of :mod:`~stitchplug_probe.controls`, ``random_unit_on_B`` and ``shuffled_on_B``.

Latents are ranked by the absolute class-mean difference (``selection="abs"``, SAEBench) or the signed
one (``"signed"``). A and B see the same examples; train/test is one stratified split from the seed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from stitchplug.api import StageError

from . import probes
from .stats import summarise


class ArmSpec(NamedTuple):
    side: str
    """``"A"`` or ``"B"``: the model whose features the probes read."""
    sparse: str | None
    """Features of the sparse probes: the SAE role (``source``, ``transferred``, ``native``, ...)."""
    sparse_name: str | None
    """The arm's name in the per-task sparse tables."""
    dense: str | None
    """Features of the dense probe: ``residual`` or ``tdown`` (``h_B @ P_down + b_down``)."""
    dense_name: str | None


ARMS: dict[str, ArmSpec] = {
    "source_on_A": ArmSpec("A", "source", "source_A", "residual", "dense_A"),
    "transferred_on_B": ArmSpec("B", "transferred", "transfer_noretrain", "residual", "dense_Tdown_noretrain"),
    "retrained_on_B": ArmSpec("B", "transferred", "transfer_retrain", "tdown", "dense_Tdown_retrain"),
    "reselected_on_B": ArmSpec("B", "transferred", "transfer_reselect", None, None),
    "residual_on_B": ArmSpec("B", None, None, "residual", "dense_B"),
    "native_on_B": ArmSpec("B", "native", "native_B", None, None),
    "random_on_B": ArmSpec("B", "random", "random_B", None, None),
    "random_unit_on_B": ArmSpec("B", "random_unit", "random_unit_B", None, None),
    "shuffled_on_B": ArmSpec("B", "shuffled", "shuffled_B", None, None),
}
B_FITTED = ("retrained_on_B", "reselected_on_B", "residual_on_B", "native_on_B", "random_on_B",
            "random_unit_on_B", "shuffled_on_B")
"""The arms fitted on B's training examples, in this order."""
SPARSE_ARMS = tuple(s.sparse_name for s in ARMS.values() if s.sparse_name)
DENSE_ARMS = ("dense_A", "dense_B", "dense_Tdown_noretrain", "dense_Tdown_retrain")
KS = (1, 2, 5, 10, 20, 50)


def split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One stratified train/test split of a task's examples from ``seed`` (sorted indices)."""
    from sklearn.model_selection import train_test_split

    y = np.asarray(y, dtype=np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
    tr, te = np.sort(tr), np.sort(te)
    if len(np.unique(y[tr])) < 2 or len(np.unique(y[te])) < 2:
        raise StageError("a train or test split has a single class; use more examples")
    return tr, te


def fit_sparse(X: np.ndarray, y: np.ndarray, ks, C: float, selection: str,
               indices: dict[str, list[int]] | None = None) -> dict[str, dict]:
    """``{str(k): probe dict}``: per k at most the width, the top-k latents (or the given ``indices``)
    refit by L2 logistic regression."""
    out = {}
    for k in ks:
        if k > X.shape[1] or (indices is not None and str(k) not in indices):
            continue
        sel = (np.asarray(indices[str(k)], dtype=np.int64) if indices is not None
               else probes.top_k(X, y, k, selection))
        out[str(k)] = probes.fit(X, y, sel, C).to_dict()
    return out


def tdown(X: np.ndarray, P_down: np.ndarray, b_down: np.ndarray) -> np.ndarray:
    """B's residual read through the stitch: ``h_B @ P_down + b_down`` (A's space)."""
    return X @ np.asarray(P_down, dtype=np.float64) + np.asarray(b_down, dtype=np.float64)


def fit_source(A: dict[str, np.ndarray], y: np.ndarray, ks, C: float, selection: str) -> dict:
    """One task's entry of A's probe set from A's training features (``source`` latents, ``dense``)."""
    return {"sparse": fit_sparse(A["source"], y, ks, C, selection),
            "dense": probes.fit(A["dense"], y, None, C).to_dict()}


def fit_on_b(B: dict[str, np.ndarray], y: np.ndarray, source_entry: dict, ks, C: float, selection: str,
             P_down: np.ndarray, b_down: np.ndarray) -> dict[str, dict]:
    """One task's entry of every arm fitted on B (:data:`B_FITTED`) whose features ``B`` holds."""
    XB = B["transferred"]
    picked = {k: p["indices"] for k, p in source_entry["sparse"].items()}
    out = {"retrained_on_B": {"sparse": fit_sparse(XB, y, ks, C, selection, indices=picked),
                              "dense": probes.fit(tdown(B["dense"], P_down, b_down), y, None, C).to_dict()},
           "reselected_on_B": {"sparse": fit_sparse(XB, y, ks, C, selection)},
           "residual_on_B": {"dense": probes.fit(B["dense"], y, None, C).to_dict()}}
    for arm in B_FITTED[3:]:
        role = ARMS[arm].sparse
        if role in B:
            out[arm] = {"sparse": fit_sparse(B[role], y, ks, C, selection)}
    return out


def transfer_entry(entry: dict, P_down: np.ndarray, b_down: np.ndarray) -> dict:
    """One task's entry of A's probe set moved to B: sparse probes as they are (they read the
    transferred SAE's latents), the dense probe composed with ``T_down``."""
    dense = probes.through_affine(probes.LinearProbe.from_dict(entry["dense"]), P_down, b_down).to_dict()
    return {"sparse": entry["sparse"], "dense": dense}


def _record(y: np.ndarray, score: np.ndarray) -> dict:
    out = summarise(y, score)
    out["correct"] = ((score > 0).astype(np.int64) == y).astype(np.int8)
    return out


def score(entry: dict, spec: ArmSpec, feats: dict[str, np.ndarray], y: np.ndarray,
          P_down: np.ndarray | None = None, b_down: np.ndarray | None = None) -> dict:
    """One task's records of one arm on its test features: ``{"sparse": {str(k): rec}, "dense": rec}``;
    ``rec`` has accuracy, Wilson ci, auc, n_test and the per-example ``correct`` vector (int8)."""
    y = np.asarray(y, dtype=np.int64)
    out: dict = {"sparse": {}}
    for k, p in (entry.get("sparse") or {}).items():
        out["sparse"][k] = _record(y, probes.LinearProbe.from_dict(p).score(feats[spec.sparse]))
    if entry.get("dense") is not None:
        X = feats["dense"] if spec.dense == "residual" else tdown(feats["dense"], P_down, b_down)
        out["dense"] = _record(y, probes.LinearProbe.from_dict(entry["dense"]).score(X))
    return out


def pack(correct: np.ndarray) -> str:
    """A 0/1 vector as a hex string (its length is the record's ``n_test``)."""
    return np.packbits(np.asarray(correct, dtype=np.uint8)).tobytes().hex()


def unpack(bits: str, n: int) -> np.ndarray:
    """The int8 0/1 vector :func:`pack` wrote."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(bits), dtype=np.uint8))[:n].astype(np.int8)


def run_task(feats: dict[str, dict[str, np.ndarray]], y: np.ndarray, *, P_down: np.ndarray, b_down: np.ndarray,
             ks=KS, test_fraction: float = 0.3, seed: int = 0, C: float = 1.0, selection: str = "abs") -> dict:
    """Every arm of one task on given features (notebooks, tests): split, fit on the training rows,
    score on the test rows, by the functions the kind uses.

    ``feats["A"]`` holds ``dense`` and ``source``; ``feats["B"]`` holds ``dense``, ``transferred`` and
    optionally ``native``, ``random``, ``random_unit`` and ``shuffled``. Returns ``{"sparse": {arm name:
    {str(k): rec}}, "dense": {arm name: rec}, "probes_A": A's entry, "n_train", "n_test"}``."""
    y = np.asarray(y, dtype=np.int64)
    tr, te = split(y, test_fraction, seed)
    rows = {side: {k: np.asarray(v)[tr] for k, v in f.items()} for side, f in feats.items()}
    src = fit_source(rows["A"], y[tr], ks, C, selection)
    entries = {"source_on_A": src, "transferred_on_B": transfer_entry(src, P_down, b_down)}
    entries |= fit_on_b(rows["B"], y[tr], src, ks, C, selection, P_down, b_down)
    out: dict = {"sparse": {}, "dense": {}}
    for label, entry in entries.items():
        spec = ARMS[label]
        test = {k: np.asarray(v)[te] for k, v in feats[spec.side].items()}
        rec = score(entry, spec, test, y[te], P_down, b_down)
        if rec["sparse"]:
            out["sparse"][spec.sparse_name] = rec["sparse"]
        if "dense" in rec:
            out["dense"][spec.dense_name] = rec["dense"]
    return out | {"probes_A": src, "n_train": int(len(tr)), "n_test": int(len(te))}
