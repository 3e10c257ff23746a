"""``analyze(run, what, budget)``: the feature analysis of a finished run folder.

Reads the run's config, stitch, source / transferred / random SAEs and models; draws held-out
documents after the cached slice; runs the requested parts at the budget's scale; writes the
``feature_analysis`` section of ``metrics.json``, plots under ``analysis/`` and the section of
``report.md`` (through :mod:`stitchplug_analysis.seam`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._core import StageError

PARTS = ("transferability", "semantic", "entropy", "attention")
BUDGETS: dict[str, dict[str, Any]] = {
    # minutes on 2 cores for the default pair (SmolLM2-135M -> Gemma-3-270M)
    "quick": {"docs": 24, "windows": 24, "sentences": 40, "versions": 5, "donor_docs": 300,
              "entropy_top": 5, "entropy_windows": 6, "attention_candidates": 16, "attention_windows": 6,
              "attention_top": 5},
    # seconds on tiny models: for tests and smoke checks, not for conclusions
    "smoke": {"docs": 4, "windows": 4, "sentences": 6, "versions": 2, "donor_docs": 20,
              "entropy_top": 2, "entropy_windows": 2, "attention_candidates": 4, "attention_windows": 2,
              "attention_top": 2},
    "full": {"docs": 200, "windows": 200, "sentences": 300, "versions": 5, "donor_docs": 2000,
             "entropy_top": 10, "entropy_windows": 32, "attention_candidates": 64, "attention_windows": 24,
             "attention_top": 10},
}
ROLES = {"source": "source", "transfer": "transferred", "baseline": "random"}


def parse_what(what: str | None) -> list[str]:
    if not what:
        return list(PARTS)
    parts = [p.strip() for p in what.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise StageError(f"unknown analysis part(s) {', '.join(map(repr, bad))} (known: {', '.join(PARTS)})")
    return parts


class RunInputs:
    """Lazily loaded pieces of a run folder (through the core's :class:`RunFolder`)."""

    def __init__(self, run: str | Path, log: Callable[[str], None] = print, progress: bool = False):
        from ._core import RunFolder

        self.rf = RunFolder.existing(run)
        self.run = self.rf.root
        self.log, self.progress = log, progress
        self.cfg = self.rf.config()
        self.stitch = self.rf.load_stitch()
        self.layer_a, self.layer_b = int(self.stitch.meta["source_layer"]), int(self.stitch.meta["target_layer"])
        for role in ("source", "transferred"):
            if not self.rf.artifact("sae", role).exists():
                raise StageError(f"{self.rf.artifact('sae', role)} is missing: feature analysis needs the SAEs of "
                                 f"`stitchplug run --artifact sae` in this folder (a probe or steering run "
                                 f"in the same folder keeps them)")
        self.context_size = int(self.cfg.get("cache", {}).get("context_size", 128))
        self.seed = int(self.cfg.get("seed", 0))
        self._models: dict[str, Any] = {}
        self._saes: dict[str, Any] = {}

    def model(self, side: str):
        if side not in self._models:
            self.log(f"loading {self.cfg.get('models', {}).get(side)}")
            self._models[side] = self.rf.load_model(side)
        return self._models[side]

    def sae(self, which: str):
        if which not in self._saes:
            role = ROLES[which]
            if which == "baseline" and not self.rf.artifact("sae", role).exists():
                from stitchplug.api import random_sae_like

                self.log("no random baseline SAE in the run; drawing one shaped like the transferred SAE")
                self._saes[which] = random_sae_like(self.sae("transfer"), seed=self.seed)
            else:
                self._saes[which] = self.rf.load_artifact("sae", role)
        return self._saes[which]

    def heldout_docs(self, n: int, skip: int = 0) -> list[dict]:
        """Documents after the cached slice (``skip`` more first), as dicts with text and topic."""
        from ._core import heldout_documents

        with self.rf.open_cache() as cache:
            return heldout_documents(cache, n, skip=skip, cache_config=self.cfg.get("cache", {}))


def analyze(run: str | Path, what: str | None = None, budget: str = "quick", log: Callable[[str], None] = print,
            progress: bool = False) -> dict:
    """Run the requested parts on the run folder ``run`` and write them into its metrics and report,
    holding the folder's lock; the results are marked as stage ``feature_analysis`` over the stitch and
    SAEs they describe, so a later ``run`` that redoes those removes them instead of leaving them stale."""
    from ._core import RunFolder, lock_run_folder

    parts = parse_what(what)
    if budget not in BUDGETS:
        raise StageError(f"unknown budget {budget!r} (known: {', '.join(BUDGETS)})")
    RunFolder.existing(run)
    with lock_run_folder(run, "stitchplug analyze"):
        RunFolder(run).check_readable()  # an unreadable metrics.json or marker: refused before any work
        return _analyze(run, parts, budget, log, progress)


def _analyze(run, parts: list[str], budget: str, log, progress: bool) -> dict:
    from .common import paired_captures, paired_windows, unembed_path
    from .report import SECTION, write_sections

    t_start = time.perf_counter()
    b = BUDGETS[budget]
    inp = RunInputs(run, log=log, progress=progress)
    A, B = inp.model("source"), inp.model("target")
    src, tgt, rnd = inp.sae("source"), inp.sae("transfer"), inp.sae("baseline")
    docs = inp.heldout_docs(b["docs"])
    if not docs:
        raise StageError("no held-out documents after the cached slice to analyse")
    t0 = time.perf_counter()
    wins = paired_windows([d["text"] for d in docs[: b["windows"]]], A, B, inp.context_size,
                          aligner=inp.cfg.get("cache", {}).get("aligner") or "auto")
    pc = paired_captures(A, B, wins, inp.layer_a, inp.layer_b, progress=progress)
    W_a, W_b = unembed_path(A), unembed_path(B)
    log(f"captured {len(wins)} held-out windows in {time.perf_counter() - t0:.0f}s")
    out: dict[str, Any] = {"budget": budget, "budget_settings": b, "layers": [inp.layer_a, inp.layer_b],
                           "n_windows": len(wins)}
    seconds: dict[str, float] = {}
    trans = None
    if "transferability" in parts or "semantic" in parts:
        t = time.perf_counter()
        from .transferability import transferability

        trans = transferability(src, tgt, pc, W_a, W_b, rnd)
        seconds["transferability"] = time.perf_counter() - t
        out["transferability"] = trans
        log(f"transferability: {seconds['transferability']:.0f}s")
    if "semantic" in parts:
        t = time.perf_counter()
        from .augment import get_augmenter
        from .semantic import classify, per_class_transferability, sentences

        sents = sentences(docs, b["sentences"])
        donors = inp.heldout_docs(b["donor_docs"], skip=b["docs"])
        aug = get_augmenter("content-swap", donors)
        sem = classify(A, src, inp.layer_a, sents, aug, n_versions=b["versions"], seed=inp.seed, progress=progress)
        sem["per_class"] = per_class_transferability(sem["classes"], trans["per_latent"]) if "per_latent" in trans else {}
        out["semantic"] = sem
        seconds["semantic"] = time.perf_counter() - t
        log(f"semantic/structural: {seconds['semantic']:.0f}s")
    if "entropy" in parts:
        t = time.perf_counter()
        out["entropy"] = run_entropy(A, B, src, tgt, pc, W_a, W_b, inp.layer_a, inp.layer_b, b)
        seconds["entropy"] = time.perf_counter() - t
        log(f"entropy features: {seconds['entropy']:.0f}s")
    if "attention" in parts:
        t = time.perf_counter()
        out["attention"] = run_attention(A, B, src, tgt, rnd, pc, inp.layer_a, inp.layer_b, b)
        seconds["attention"] = time.perf_counter() - t
        log(f"attention deactivation: {seconds['attention']:.0f}s")
    out["seconds"] = seconds
    write_sections(inp.rf, out, log=log)
    rf = inp.rf
    inputs = {"stitch": rf.stitch} | {role: rf.artifact("sae", role) for role in ROLES.values()
                                      if rf.artifact("sae", role).exists()}
    rf.record_results(SECTION, f"stitchplug analyze --run {rf.root}", {"parts": parts, "budget": budget},
                      time.perf_counter() - t_start, inputs, metrics=[SECTION], report=[SECTION])
    return out


def run_entropy(A, B, src, tgt, pc, W_a, W_b, layer_a: int, layer_b: int, b: dict) -> dict:
    """Top entropy latents by null-space share on A and on B, each measured on both models."""
    from .entropy import entropy_features, null_basis

    ca, cb = pc.a[: b["entropy_windows"]], pc.b[: b["entropy_windows"]]
    k = b["entropy_top"]
    na, nb = null_basis(W_a), null_basis(W_b)
    base_a = entropy_features(src, A, layer_a, pc.a, W_a, top=k, ablate=False, basis=na)
    base_b = entropy_features(tgt, B, layer_b, pc.b, W_b, top=k, ablate=False, basis=nb)
    latents = list(dict.fromkeys([r["latent"] for r in base_a["top"]] + [r["latent"] for r in base_b["top"]]))
    on_a = entropy_features(src, A, layer_a, ca, W_a, latents=latents, basis=na)
    on_b = entropy_features(tgt, B, layer_b, cb, W_b, latents=latents, basis=nb)
    rows = []
    for ra, rb in zip(on_a["top"], on_b["top"]):
        rows.append({"latent": ra["latent"], "top_on": ("A" if ra["latent"] in {r["latent"] for r in base_a["top"]} else "")
                     + ("B" if ra["latent"] in {r["latent"] for r in base_b["top"]} else ""),
                     "source": {k_: v for k_, v in ra.items() if k_ != "latent"},
                     "transferred": {k_: v for k_, v in rb.items() if k_ != "latent"}})
    sa, sb = np.array(base_a["null_share"]), np.array(base_b["null_share"])
    return {"null_dims": [base_a["null_dims"], base_b["null_dims"]], "fraction": base_a["fraction"],
            "null_share_source": base_a["null_share"], "null_share_transferred": base_b["null_share"],
            "mean_null_share": [float(sa.mean()), float(sb.mean())],
            "corr_null_share": float(np.corrcoef(sa, sb)[0, 1]), "features": rows}


def run_attention(A, B, src, tgt, rnd, pc, layer_a: int, layer_b: int, b: dict) -> dict:
    """Rank the most frequent live latents of A by BOS-attention effect, then test them on B."""
    from .attention import bos_attention_effects, rank_features
    from .entropy import activation_stats

    ca, cb = pc.a[: b["attention_windows"]], pc.b[: b["attention_windows"]]
    n = b["attention_candidates"]
    freq = activation_stats(src, ca)["frequency"]
    cands = [int(i) for i in np.argsort(-freq)[:n] if freq[i] > 0]
    rank_a = rank_features(bos_attention_effects(A, src, layer_a, ca, cands))
    rank_b = {r["latent"]: r for r in rank_features(bos_attention_effects(B, tgt, layer_b, cb, cands))}
    order_b = [r["latent"] for r in sorted(rank_b.values(), key=lambda r: -r["score"])]
    rfreq = activation_stats(rnd, cb)["frequency"]
    rcands = [int(i) for i in np.argsort(-rfreq)[:n] if rfreq[i] > 0]
    rank_r = rank_features(bos_attention_effects(B, rnd, layer_b, cb, rcands)) if rcands else []
    null = max((r["score"] for r in rank_r), default=0.0)
    top = []
    for r in rank_a[: b["attention_top"]]:
        rb = rank_b.get(r["latent"])
        top.append({"latent": r["latent"], "source": r, "transferred": rb,
                    "rank_on_B": order_b.index(r["latent"]) + 1 if rb else None,
                    "keeps_role": bool(rb and rb["score"] > null)})
    return {"candidates": cands, "source_ranking": rank_a, "random_max_score": null,
            "random_ranking": rank_r[:5], "top": top,
            "n_keep_role": sum(t["keeps_role"] for t in top)}
