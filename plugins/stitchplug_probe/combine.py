"""The step across the probe arms (the kind's ``aggregate``): from the ``probe_accuracy`` evaluator's
result on every arm, the per-task tables by arm name (``source_A``, ``transfer_noretrain``, ...,
``dense_A``, ...), the means over tasks with bootstrap intervals, the paired gaps to the native and
random arms, recovery, the failures with their measured reason, and the passes' timing."""

from __future__ import annotations

import numpy as np

from .arms import ARMS, DENSE_ARMS, SPARSE_ARMS, unpack
from .stats import bootstrap_mean

EVALUATOR = "probe_accuracy"


def _evaluated(results: dict):
    """The ``probe_accuracy`` result of each arm in ``{arm label: {evaluator: result}}`` (the
    ``aggregate``/``diagnostics`` entries and arms without it are skipped)."""
    return (r[EVALUATOR] for r in results.values() if isinstance(r, dict) and EVALUATOR in r)


def _unpacked(rec: dict) -> dict:
    return rec | {"correct": unpack(rec["correct"], rec["n_test"])}


def per_task(results: dict) -> dict[str, dict]:
    """``{task: {"sparse": {arm name: {k: rec}}, "dense": {arm name: rec}, ...}}`` with the ``correct``
    vectors unpacked, from ``{arm label: {evaluator: result}}``."""
    out: dict[str, dict] = {}
    for label, spec in ARMS.items():
        res = (results.get(label) or {}).get(EVALUATOR)
        if not res:
            continue
        for name, rec in res["tasks"].items():
            t = out.setdefault(name, {"sparse": {}, "dense": {}})
            if rec["sparse"]:
                t["sparse"][spec.sparse_name] = {k: _unpacked(r) for k, r in rec["sparse"].items()}
            if "dense" in rec:
                t["dense"][spec.dense_name] = _unpacked(rec["dense"])
            for key in ("n_train", "n_test", "n_examples", "source", "coverage"):
                if key in rec:
                    t[key] = rec[key]
    order = {a: i for i, a in enumerate(SPARSE_ARMS + DENSE_ARMS)}
    for t in out.values():
        for part in ("sparse", "dense"):
            t[part] = dict(sorted(t[part].items(), key=lambda kv: order[kv[0]]))
    return out


def strip_correct(task: dict) -> dict:
    """One task's tables without the per-example vectors (for metrics.json)."""
    out = {"sparse": {a: {k: {x: v for x, v in r.items() if x != "correct"} for k, r in by_k.items()}
                      for a, by_k in task["sparse"].items()},
           "dense": {a: {x: v for x, v in r.items() if x != "correct"} for a, r in task["dense"].items()}}
    out.update({k: task[k] for k in ("n_train", "n_test") if k in task})
    return out


def means(tasks: dict[str, dict], ks, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean accuracy over tasks per arm (and k) with bootstrap intervals, the mean transfer gap to
    the native arm (paired over the same test examples), and the tasks where the no-retrain transfer
    beats the random SAE."""
    out: dict = {"sparse": {}, "dense": {}, "gap_vs_native": {}, "tasks_above_random": {}}
    names = list(tasks)
    for arm in SPARSE_ARMS:
        for k in map(str, ks):
            have = [n for n in names if k in tasks[n]["sparse"].get(arm, {})]
            if not have:
                continue
            vecs = [tasks[n]["sparse"][arm][k]["correct"] for n in have]
            out["sparse"].setdefault(arm, {})[k] = bootstrap_mean(vecs, None, n_boot, seed)
            both = [n for n in have if k in tasks[n]["sparse"].get("native_B", {})]
            if both and arm != "native_B":
                out["gap_vs_native"].setdefault(arm, {})[k] = bootstrap_mean(
                    [tasks[n]["sparse"][arm][k]["correct"] for n in both],
                    [tasks[n]["sparse"]["native_B"][k]["correct"] for n in both], n_boot, seed)
    for arm in DENSE_ARMS:
        have = [n for n in names if arm in tasks[n]["dense"]]
        if have:
            out["dense"][arm] = bootstrap_mean([tasks[n]["dense"][arm]["correct"] for n in have], None, n_boot, seed)
    for k in map(str, ks):
        pairs = [(tasks[n]["sparse"]["transfer_noretrain"][k]["accuracy"], tasks[n]["sparse"]["random_B"][k]["accuracy"])
                 for n in names if k in tasks[n]["sparse"].get("transfer_noretrain", {})
                 and k in tasks[n]["sparse"].get("random_B", {})]
        if pairs:
            out["tasks_above_random"][k] = {"above": sum(a > b for a, b in pairs), "of": len(pairs)}
    return out


def _vs(task: dict, arm: str, base: str, n_boot: int, seed: int) -> dict:
    """Per k: paired bootstrap of accuracy(arm) - accuracy(base) on one task's test examples."""
    out = {}
    for k, rec in task["sparse"].get(arm, {}).items():
        other = task["sparse"].get(base, {}).get(k)
        if other is not None:
            out[k] = bootstrap_mean([rec["correct"]], [other["correct"]], n_boot, seed)
    return out


def timing(results: dict, n: int) -> dict:
    """The passes' examples and seconds (each pass once) and ``n`` examples per second through both models."""
    passes: dict[str, dict] = {}
    for res in _evaluated(results):
        for t in res.get("fit"), res.get("scoring"):
            if t:
                passes.setdefault(t["pass"], t)
    feat = sum(t["feature_seconds"] for t in passes.values())
    return {"examples": n, "feature_seconds": round(feat, 3),
            "probe_seconds": round(sum(t["probe_seconds"] for t in passes.values()), 3),
            "examples_per_second": n / feat if feat > 0 else None, "passes": list(passes.values())}


def combine(results: dict, ks, n_boot: int = 2000) -> dict:
    """``{"tasks": per-task tables (no per-example vectors), <means>, "recovery", "failures", "timing"}``
    from ``{arm label: {evaluator: result}}``."""
    from . import coverage

    tasks = per_task(results)
    seed = next((r.get("seed", 0) for r in _evaluated(results)), 0)
    out = means(tasks, ks, n_boot, seed)
    stripped = {}
    for name, t in tasks.items():
        r = stripped[name] = strip_correct(t) | {"source": t.get("source", ""), "n_examples": t.get("n_examples")}
        r["recovery"] = coverage.recovery(r)
        if "coverage" in t:
            r["coverage"] = t["coverage"]
        r["vs_random"] = _vs(t, "transfer_noretrain", "random_B", n_boot, seed)
        r["vs_native"] = _vs(t, "transfer_retrain", "native_B", n_boot, seed)
    out["recovery"] = coverage.recovery_summary(stripped)
    out["failures"] = coverage.failures(stripped)
    out["timing"] = timing(results, sum(t.get("n_examples") or 0 for t in tasks.values()))
    return {"tasks": stripped, **out}


def has_results(results: dict) -> bool:
    return any(True for _ in _evaluated(results))
