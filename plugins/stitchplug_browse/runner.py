"""``browse(run)``: the two passes, the tables, the site; everything under ``RUN/browse/``.

Layout::

    RUN/browse/index.html, latent.html, vectors.html, browse.js, browse.css   the site (opens from file://)
    RUN/browse/data/index.json              one row per latent (+ "meta")
    RUN/browse/data/latents/NNNN.json       records of latents NNNN*64 .. NNNN*64+63
    RUN/browse/data/docs.json               the held-out documents' tokens on A and on B
    RUN/browse/data/vectors.json            probes and steering vectors of the run (when present)
    RUN/browse/site-data/*.js               the same data for the pages (browsers refuse JSON from file://)
    RUN/browse/state/                       checkpoints of the passes and the tables (resume after a kill)
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ._core import StageError

DEFAULTS = {"docs": 256, "top_k": 12, "window": 16, "chunk": 16, "checkpoint": 32, "cross_width": 32,
            "n_logits": 10, "n_neighbours": 6}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def browse(run: str | Path, docs: int = DEFAULTS["docs"], top_k: int = DEFAULTS["top_k"],
           window: int = DEFAULTS["window"], chunk: int = DEFAULTS["chunk"], checkpoint: int = DEFAULTS["checkpoint"],
           log: Callable[[str], None] = print, progress: bool = True, inputs: Any = None) -> dict:
    """Compute (or resume) the browser's data for run folder ``run`` and write the site; returns a
    summary (paths, counts, seconds, documents computed by this call per pass)."""
    from .inputs import RunInputs, windows
    from .stream import check_settings, cross_ranges, run_pass, sae_fingerprint

    t0 = time.perf_counter()
    inp = inputs or RunInputs(run, log=log)
    out = inp.rf.path("browse")
    settings = {"docs": int(docs), "top_k": int(top_k), "window": int(window), "chunk": int(chunk),
                "checkpoint": int(checkpoint), "cross_width": max(2 * int(window), DEFAULTS["cross_width"])}
    check_settings(settings)
    with inp.rf.writing("stitchplug browse"):
        texts = inp.heldout(settings["docs"])
        if not texts:
            raise StageError(f"no held-out documents after the cached slice of {inp.rf.root} to browse")
        A, B = inp.model("a"), inp.model("b")
        wins = windows(texts, A, B, inp.context_size)
        if not wins:
            raise StageError("none of the held-out documents has a token on both models")
        sa, sb = inp.sae("a"), inp.sae("b")
        if int(sa.cfg.d_sae) != int(sb.cfg.d_sae):
            raise StageError(f"source SAE has {sa.cfg.d_sae} latents, transferred SAE {sb.cfg.d_sae}; not a transfer pair")
        key = {**{k: v for k, v in settings.items() if k != "checkpoint"}, "texts": _hash(texts),
               "layers": inp.layers, "sae_a": sae_fingerprint(sa), "sae_b": sae_fingerprint(sb),
               "context_size": inp.context_size}
        a = run_pass("a", A, sa, inp.layers["a"], wins, out / "state" / "pass_a.pt", {**settings, **key},
                     log=log, progress=progress)
        first, length = cross_ranges(a, wins, settings["cross_width"])
        key_b = {**settings, **key, "a_top": _hash(a.doc.tolist())}
        b = run_pass("b", B, sb, inp.layers["b"], wins, out / "state" / "pass_b.pt", key_b, log=log,
                     progress=progress, cross=(a, first, length))
        t_pass = time.perf_counter() - t0
        tabs = _tables(inp, A, B, sa, sb, out / "state" / "tables.pt", key, log)
        summary = _write(inp, out, texts, wins, a, b, first, length, tabs, settings, log)
    summary.update({"seconds": time.perf_counter() - t0, "seconds_passes": t_pass,
                    "computed_docs": {"a": a.computed, "b": b.computed}, "n_docs": len(wins)})
    log(f"browse: {summary['n_latents']} latents ({summary['n_live']} live) over {len(wins)} held-out documents "
        f"in {summary['seconds']:.0f}s -> {out / 'index.html'}")
    return summary


def _tables(inp, A, B, sa, sb, path: Path, key: dict, log) -> dict:
    """Logit effects and decoder neighbours of both SAEs, saved once (a re-run reuses them)."""
    from ._core import folded_unembed
    from .stream import save_atomic
    from .tables import decoder, logit_effects, neighbours

    if path.exists():
        try:
            saved = torch.load(path, weights_only=False)
            if saved.get("key") == key:
                return saved["tables"]
        except Exception:
            pass
    log("logit effects and decoder neighbours")
    tabs = {}
    for side, model, sae in (("a", A, sa), ("b", B, sb)):
        rows = decoder(sae)
        tabs[side] = {"logits": logit_effects(rows, folded_unembed(model), DEFAULTS["n_logits"]),
                      "neighbours": neighbours(rows, DEFAULTS["n_neighbours"])}
    save_atomic({"key": key, "tables": tabs}, path)
    return tabs


def _write(inp, out: Path, texts, wins, a, b, first, length, tabs, settings, log) -> dict:
    from .records import build
    from .site import SHARD, write_shard, write_site
    from .stream import HIST_EDGES
    from .tables import analysis_columns, token_strings, vocab_strings
    from .vectors import vectors

    A, B = inp.model("a"), inp.model("b")
    toks = {"a": [token_strings(w.text, w.ends_a, w.ids_a, A.tokenizer) for w in wins],
            "b": [token_strings(w.text, w.ends_b, w.ids_b, B.tokenizer) for w in wins]}
    lengths = {s: [len(x) for x in toks[s]] for s in ("a", "b")}
    vocab = {}
    for s, model in (("a", A), ("b", B)):
        lg = tabs[s]["logits"]
        vocab[s] = vocab_strings(model.tokenizer, torch.cat([lg["pos_ids"], lg["neg_ids"]], 1).numpy())
    metrics = inp.rf.metrics()
    eval_freq = {s: inp.eval_frequency(s) for s in ("a", "b")}
    m = a.m
    analysis = analysis_columns(metrics, m)
    out.mkdir(parents=True, exist_ok=True)
    rows, shards = [], set()
    for start in range(0, m, SHARD):
        recs, part = build(a, b, first, length, toks, lengths, {s: tabs[s]["logits"] for s in ("a", "b")}, vocab,
                           {s: tabs[s]["neighbours"] for s in ("a", "b")}, eval_freq, analysis,
                           latents=range(start, min(start + SHARD, m)))
        shards.add(write_shard(out, start, recs))
        rows += part
    fa = (metrics.get("feature_analysis") or {}).get("transferability") or {}
    meta = {"run": str(inp.rf.root), "models": inp.model_names, "layers": inp.layers, "n_latents": m,
            "n_docs": len(wins), "n_tokens": {"a": a.n_tokens, "b": b.n_tokens}, "settings": settings,
            "hist_edges": [float(x) for x in HIST_EDGES],
            "freq_source": {s: ("cache eval split, n=%d tokens" % eval_freq[s]["n_tokens"]) if eval_freq[s] else None
                            for s in ("a", "b")},
            "transferability": {k: fa.get(k) for k in ("n_usable", "usable_share", "n_live", "n_dead")} if fa else None,
            "analysis_parts": [p for p in ("transferability", "semantic", "entropy", "attention")
                               if p in (metrics.get("feature_analysis") or {})]}
    vec = vectors(inp, A, B, log)
    write_site(out, meta, rows, shards, {"a": toks["a"], "b": toks["b"]}, vec)
    return {"out": str(out), "n_latents": m, "n_live": sum(r["live"] for r in rows), "index": str(out / "index.html")}

