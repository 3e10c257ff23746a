"""The probe-transfer experiment over many tasks, independent of how the run pipeline supplies the
models, layers, stitch and SAEs (the artifact kind calls :func:`run_probes`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from . import coverage
from .arms import DENSE_ARMS, SPARSE_ARMS, run_task, strip_correct
from .features import extract, identity, sae_encoder
from .stats import bootstrap_mean
from .tasks import load_task


@dataclass
class ProbeSettings:
    """What :func:`run_probes` needs to know (the plugin's config section maps onto this)."""

    tasks: list[str]
    max_examples: int = 1000
    ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
    pooling: str = "mean"
    context_size: int = 128
    test_fraction: float = 0.3
    C: float = 1.0
    batch_size: int = 8
    n_boot: int = 2000
    seed: int = 0
    selection: str = "abs"
    min_per_class: int = 10
    coverage: bool = True
    extra: dict = field(default_factory=dict)


def stitch_down(stitch: Any) -> tuple[np.ndarray, np.ndarray]:
    return (stitch.P_down.detach().double().cpu().numpy(), stitch.b_down.detach().double().cpu().numpy())


def run_probes(adapter_a, layer_a: int, adapter_b, layer_b: int, stitch: Any, saes: dict[str, Any],
               settings: ProbeSettings, log: Callable[[str], None] = print, progress: bool = False) -> dict:
    """Every task through both models, every arm fitted and scored; per-task results and means.

    ``saes`` maps ``source`` (on A), ``transferred`` (on B) and optionally ``native``, ``random``
    (on B) to SAELens SAEs. Returns ``{"tasks": {name: results without per-example vectors},
    "aggregate": ..., "timing": ..., "probes_A": {name: A's fitted probes}}``.
    """
    P_down, b_down = stitch_down(stitch)
    enc_a = {"dense": identity, "source": sae_encoder(saes["source"])}
    enc_b = {"dense": identity}
    enc_b.update({k: sae_encoder(saes[k]) for k in ("transferred", "native", "random", "random_unit", "shuffled")
                  if saes.get(k) is not None})
    per_task, correct, probes_a = {}, {}, {}
    t_feat = t_probe = 0.0
    n_examples = 0
    for spec in settings.tasks:
        task = load_task(spec, max_examples=settings.max_examples, seed=settings.seed,
                         min_per_class=settings.min_per_class)
        log(f"  probe task {task.name}: {len(task)} examples")
        t0 = time.perf_counter()
        with torch.inference_mode():
            feats = extract(adapter_a, layer_a, adapter_b, layer_b, task.texts, encoders_a=enc_a, encoders_b=enc_b,
                            context_size=settings.context_size, pooling=settings.pooling,
                            batch_size=settings.batch_size, progress=progress, desc=task.name,
                            keep_tokens=settings.coverage)
            tokens = feats.pop("tokens", None)
            cov = None if tokens is None else coverage.task_coverage(
                tokens, P_down, b_down, {"source": saes["source"]},
                {k: saes[k] for k in ("transferred", "native") if saes.get(k) is not None})
            del tokens
        t1 = time.perf_counter()
        res = run_task(feats, task.labels, P_down=P_down, b_down=b_down, ks=settings.ks,
                       test_fraction=settings.test_fraction, seed=settings.seed, C=settings.C,
                       selection=settings.selection)
        t_probe += time.perf_counter() - t1
        t_feat += t1 - t0
        n_examples += len(task)
        per_task[task.name] = strip_correct(res) | {"source": task.source, "n_examples": len(task)}
        per_task[task.name]["recovery"] = coverage.recovery(per_task[task.name])
        if cov is not None:
            per_task[task.name]["coverage"] = cov
        probes_a[task.name] = res["probes_A"]
        correct[task.name] = res
    agg = aggregate(correct, settings.ks, settings.n_boot, settings.seed)
    for name, r in per_task.items():
        r["vs_random"] = _per_task_vs(correct[name], "transfer_noretrain", "random_B", settings)
        r["vs_native"] = _per_task_vs(correct[name], "transfer_retrain", "native_B", settings)
    timing = {"examples": n_examples, "feature_seconds": round(t_feat, 3), "probe_seconds": round(t_probe, 3),
              "examples_per_second": n_examples / t_feat if t_feat > 0 else None}
    agg["recovery"] = coverage.recovery_summary(per_task)
    agg["failures"] = coverage.failures(per_task)
    return {"tasks": per_task, "aggregate": agg, "timing": timing, "probes_A": probes_a}


def _per_task_vs(res: dict, arm: str, base: str, s: ProbeSettings) -> dict:
    """Per k: paired bootstrap of accuracy(arm) - accuracy(base) on this task's test examples."""
    out = {}
    for k, rec in res["sparse"].get(arm, {}).items():
        other = res["sparse"].get(base, {}).get(k)
        if other is not None:
            out[str(k)] = bootstrap_mean([rec["correct"]], [other["correct"]], s.n_boot, s.seed)
    return out


def aggregate(results: dict[str, dict], ks, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean accuracy over tasks per arm (and k) with bootstrap intervals, and the mean transfer gap to
    the native arm (paired over the same test examples)."""
    out: dict = {"sparse": {}, "dense": {}, "gap_vs_native": {}, "tasks_above_random": {}}
    names = list(results)
    for arm in SPARSE_ARMS:
        for k in ks:
            have = [n for n in names if k in results[n]["sparse"].get(arm, {})]
            if not have:
                continue
            vecs = [results[n]["sparse"][arm][k]["correct"] for n in have]
            out["sparse"].setdefault(arm, {})[str(k)] = bootstrap_mean(vecs, None, n_boot, seed)
            both = [n for n in have if k in results[n]["sparse"].get("native_B", {})]
            if both and arm != "native_B":
                out["gap_vs_native"].setdefault(arm, {})[str(k)] = bootstrap_mean(
                    [results[n]["sparse"][arm][k]["correct"] for n in both],
                    [results[n]["sparse"]["native_B"][k]["correct"] for n in both], n_boot, seed)
    for arm in DENSE_ARMS:
        have = [n for n in names if arm in results[n]["dense"]]
        if have:
            out["dense"][arm] = bootstrap_mean([results[n]["dense"][arm]["correct"] for n in have], None, n_boot, seed)
    for k in ks:
        pairs = [(results[n]["sparse"]["transfer_noretrain"][k]["accuracy"], results[n]["sparse"]["random_B"][k]["accuracy"])
                 for n in names if k in results[n]["sparse"].get("transfer_noretrain", {})
                 and k in results[n]["sparse"].get("random_B", {})]
        if pairs:
            out["tasks_above_random"][str(k)] = {"above": sum(a > b for a, b in pairs), "of": len(pairs)}
    return out
