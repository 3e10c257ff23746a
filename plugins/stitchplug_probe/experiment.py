"""The three passes of the probe experiment over the task texts, on adapters (the kind calls them with
its contexts' adapters; :func:`run_probes` composes them without the pipeline, for notebooks and tests).

- :func:`fit_source`: A's training examples -> A's probe set (``probe.source``);
- :func:`fit_on_b`: B's training examples -> the probe sets of the arms fitted on B
  (:data:`~stitchplug_probe.arms.B_FITTED`; the kind's ``extra_arms``);
- :func:`score_arms`: every arm's probes on the test examples of its model, one pass per model for all
  arms, with each task's coverage (:mod:`~stitchplug_probe.coverage`) when both models are read (the
  ``probe_accuracy`` evaluator).

Fitting reads only the training examples and scoring only the test examples, so the three passes read
each example once per model: the cost of one pass over every task through both models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from . import arms as arms_mod
from . import coverage
from .features import extract, identity, sae_encoder
from .tasks import Task, load_task


@dataclass
class ProbeSettings:
    """What the passes need to know (the plugin's config section maps onto this: :func:`settings_from`)."""

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


def settings_from(cfg, ctx) -> ProbeSettings:
    """The settings of the kind's config section ``cfg`` in the run of context ``ctx`` (its seed;
    ``context_size`` None: the run's cache context size, else 128)."""
    from .tasks import expand_specs

    cache_context_size = None
    if ctx.folder is not None:
        try:
            cache_context_size = int(ctx.folder.config()["cache"]["context_size"])
        except Exception:  # a folder without a readable config: the default below
            pass
    context_size = cfg.context_size or cache_context_size or 128
    return ProbeSettings(tasks=expand_specs(list(cfg.tasks)), max_examples=cfg.max_examples, ks=tuple(cfg.ks),
                         pooling=cfg.pooling, context_size=int(context_size), test_fraction=cfg.test_fraction,
                         C=cfg.C, batch_size=cfg.batch_size, n_boot=cfg.n_boot, seed=ctx.seed,
                         selection=cfg.selection, extra={"task_specs": list(cfg.tasks)})


def load_split(spec: str, s: ProbeSettings) -> tuple[Task, np.ndarray, np.ndarray]:
    """The task of ``spec`` and its stratified ``(train, test)`` indices, the same in every pass (each
    pass reads the task again, so an edited task file is never served from memory)."""
    task = load_task(spec, max_examples=s.max_examples, seed=s.seed, min_per_class=s.min_per_class)
    tr, te = arms_mod.split(task.labels, s.test_fraction, s.seed)
    return task, tr, te


def stitch_down(stitch: Any) -> tuple[np.ndarray, np.ndarray]:
    return (stitch.P_down.detach().double().cpu().numpy(), stitch.b_down.detach().double().cpu().numpy())


def transfer_probes(artifact: dict, stitch: Any, **target: Any) -> dict:
    """A's probe set on B (the ``transferred_on_B`` arm): sparse probes kept (they read the transferred
    SAE), dense ones composed with T_down (:func:`~stitchplug_probe.arms.transfer_entry`)."""
    P_down, b_down = stitch_down(stitch)
    tasks = {t: arms_mod.transfer_entry(v, P_down, b_down) for t, v in artifact["tasks"].items()}
    return {"arm": "transferred_on_B", "side": "B", "model": target.get("target_model"),
            "hook": target.get("target_hook"),
            "reads": {"sparse": "transferred SAE (Eq. 6) latents, A's indices and weights",
                      "dense": "residual of B (A's probe composed with T_down)"}, "tasks": tasks}


def _encoders(saes: dict[str, Any], roles) -> dict:
    out = {"dense": identity}
    out.update({r: sae_encoder(saes[r]) for r in roles if saes.get(r) is not None})
    return out


def _texts(task: Task, idx: np.ndarray) -> list[str]:
    return [task.texts[i] for i in idx]


def fit_source(adapter_a, layer_a: int, adapter_b, saes: dict[str, Any], s: ProbeSettings,
               log: Callable[[str], None] = print, progress: bool = False) -> dict:
    """A's probe set: per task, top-k probes on the source SAE's latents and a dense probe, fitted on
    the training examples. ``adapter_b`` only cuts the windows (the passes share them)."""
    tasks, t_feat, t_fit, n = {}, 0.0, 0.0, 0
    for spec in s.tasks:
        task, tr, _ = load_split(spec, s)
        log(f"  probe task {task.name}: {len(task)} examples")
        t0 = time.perf_counter()
        with torch.inference_mode():
            A = extract(adapter_a, layer_a, adapter_b, 0, _texts(task, tr), encoders_a=_encoders(saes, ["source"]),
                        encoders_b={}, context_size=s.context_size, pooling=s.pooling, batch_size=s.batch_size,
                        progress=progress, desc=task.name)["A"]
        t1 = time.perf_counter()
        tasks[task.name] = arms_mod.fit_source(A, task.labels[tr], s.ks, s.C, s.selection)
        t_fit += time.perf_counter() - t1
        t_feat += t1 - t0
        n += len(tr)
    return {"tasks": tasks, "fit": _timing("A, training examples", n, t_feat, t_fit)}


def fit_on_b(adapter_a, adapter_b, layer_b: int, source: dict, saes: dict[str, Any], stitch: Any,
             s: ProbeSettings, progress: bool = False) -> dict[str, dict]:
    """``{arm: probe set}`` for every arm fitted on B's training examples whose SAE is in ``saes``."""
    P_down, b_down = stitch_down(stitch)
    roles = ["transferred", "native", "random", "random_unit", "shuffled"]
    out: dict[str, dict] = {}
    t_feat, t_fit, n = 0.0, 0.0, 0
    for spec in s.tasks:
        task, tr, _ = load_split(spec, s)
        t0 = time.perf_counter()
        with torch.inference_mode():
            B = extract(adapter_a, 0, adapter_b, layer_b, _texts(task, tr), encoders_a={},
                        encoders_b=_encoders(saes, roles), context_size=s.context_size, pooling=s.pooling,
                        batch_size=s.batch_size, progress=progress, desc=task.name)["B"]
        t1 = time.perf_counter()
        for arm, entry in arms_mod.fit_on_b(B, task.labels[tr], source["tasks"][task.name], s.ks, s.C,
                                            s.selection, P_down, b_down).items():
            out.setdefault(arm, {"tasks": {}})["tasks"][task.name] = entry
        t_fit += time.perf_counter() - t1
        t_feat += t1 - t0
        n += len(tr)
    fit = _timing("B, training examples", n, t_feat, t_fit)
    for art in out.values():
        art["fit"] = fit
    return out


def score_arms(adapter_a, layer_a: int, adapter_b, layer_b: int, arms: dict[str, dict], saes: dict[str, Any],
               stitch: Any, s: ProbeSettings, progress: bool = False) -> dict[str, dict]:
    """``{label: result}`` for probe sets ``arms`` (label -> artifact, labels of :data:`ARMS`): per task
    the arm's records on the test examples (``correct`` packed by :func:`~stitchplug_probe.arms.pack`).
    Each model is run once per task for all its arms; when both are, the transferred arm's result also
    holds each task's coverage on those tokens."""
    P_down, b_down = stitch_down(stitch)
    specs = {label: arms_mod.ARMS[label] for label in arms}
    want = {side: {sp.sparse for sp in specs.values() if sp.side == side and sp.sparse} for side in ("A", "B")}
    reads = {side: any(sp.side == side for sp in specs.values()) for side in ("A", "B")}
    keep_tokens = s.coverage and reads["A"] and reads["B"]
    out = {label: {"tasks": {}, "seed": s.seed, "fit": art.get("fit")} for label, art in arms.items()}
    t_feat, t_score, n = 0.0, 0.0, 0
    for spec in s.tasks:
        task, tr, te = load_split(spec, s)
        t0 = time.perf_counter()
        with torch.inference_mode():
            feats = extract(adapter_a, layer_a, adapter_b, layer_b, _texts(task, te),
                            encoders_a=_encoders(saes, want["A"]) if reads["A"] else {},
                            encoders_b=_encoders(saes, want["B"]) if reads["B"] else {},
                            context_size=s.context_size, pooling=s.pooling, batch_size=s.batch_size,
                            progress=progress, desc=task.name, keep_tokens=keep_tokens)
            tokens = feats.pop("tokens", None)
            cov = None if tokens is None else coverage.task_coverage(
                tokens, P_down, b_down, {"source": saes["source"]},
                {k: saes[k] for k in ("transferred", "native") if saes.get(k) is not None})
            del tokens
        t1 = time.perf_counter()
        y = task.labels[te]
        for label, art in arms.items():
            entry = art["tasks"].get(task.name)
            if entry is None:
                continue
            rec = arms_mod.score(entry, specs[label], feats[specs[label].side], y, P_down, b_down)
            for r in [*rec["sparse"].values(), *([rec["dense"]] if "dense" in rec else [])]:
                r["correct"] = arms_mod.pack(r["correct"])
            rec.update(n_train=int(len(tr)), n_test=int(len(te)), n_examples=len(task), source=task.source)
            if cov is not None and label == "transferred_on_B":
                rec["coverage"] = cov
            out[label]["tasks"][task.name] = rec
        t_score += time.perf_counter() - t1
        t_feat += t1 - t0
        n += len(te)
    scoring = _timing(" and ".join(side for side in ("A", "B") if reads[side]) + ", test examples", n, t_feat, t_score)
    for res in out.values():
        res["scoring"] = scoring
    return out


def _timing(name: str, examples: int, feature_s: float, probe_s: float) -> dict:
    return {"pass": name, "examples": examples, "feature_seconds": round(feature_s, 3),
            "probe_seconds": round(probe_s, 3)}


def run_probes(adapter_a, layer_a: int, adapter_b, layer_b: int, stitch: Any, saes: dict[str, Any],
               settings: ProbeSettings, log: Callable[[str], None] = print, progress: bool = False) -> dict:
    """The whole experiment without the pipeline: the three passes and the step across arms.

    ``saes`` maps ``source`` (on A), ``transferred`` (on B) and optionally ``native``, ``random``,
    ``random_unit``, ``shuffled`` (on B) to SAELens SAEs. Returns :func:`~stitchplug_probe.combine.combine`'s
    ``{"tasks", "sparse", "dense", ...}`` plus ``"probes_A"`` (A's probe set)."""
    from .combine import combine

    source = fit_source(adapter_a, layer_a, adapter_b, saes, settings, log=log, progress=progress)
    arms = {"source_on_A": source, "transferred_on_B": transfer_probes(source, stitch)}
    arms |= fit_on_b(adapter_a, adapter_b, layer_b, source, saes, stitch, settings, progress=progress)
    results = score_arms(adapter_a, layer_a, adapter_b, layer_b, arms, saes, stitch, settings, progress=progress)
    out = combine({label: {"probe_accuracy": r} for label, r in results.items()}, settings.ks, settings.n_boot)
    out["probes_A"] = source["tasks"]
    return out
