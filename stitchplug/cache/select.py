"""Layer-selective caching: choose the target layer by SVCCA on a small first pass, then cache only it.

Caching every layer of B so that SVCCA can pick one costs ``n_layers`` times the disk of the one
layer used afterwards, and runs B's forward through all its blocks. Instead:

1. **probe**: the tokens SVCCA read on an all-layer cache (the first ``svcca_tokens`` rows of its
   training split: a planning pass windows the slice like the writer and applies the reader's
   document split), run through A (to its source layer) and B (all layers); nothing is written;
2. :func:`~stitchplug.stitch.svcca.choose_layer` picks ``lB`` on those rows;
3. :func:`~stitchplug.cache.writer.build_cache` caches the source layer(s) and ``lB`` only, each
   model's forward stopping right after its last cached layer.

The probe (tokens, profile, chosen layer, seconds) is stored in the cache's ``layer_selection``
attribute (JSON) and returned, so the stitch stage and the report show the full profile.
``target_layers="all"`` keeps the old behaviour (every layer cached, SVCCA on the cache).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .. import dist
from ..adapter import ModelAdapter
from ..config import SVCCA_TOKENS
from ..errors import CacheError
from .align import get_aligner
from .writer import _forward, build_cache, cache_config, check_existing

SELECTION_ATTR = "layer_selection"


def probe_rows(source: ModelAdapter, target: ModelAdapter, *, corpus: str, doc_start: int, n_tokens: int,
               context_size: int, source_layer: int, target_layers: list[int], batch_size: int,
               aligner: str = "auto", corpus_cache_dir: str | None = None, tokens: int | None = None,
               max_docs: int | None = None, eval_fraction: float = 0.1,
               split_seed: int = 0, timings: dict | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The rows SVCCA reads: A at ``source_layer`` ``[n, dA]`` and B at each of ``target_layers``
    ``{l: [n, dB]}`` (float32, in memory; nothing is written).

    With ``tokens`` (the cache's budget) these are exactly the rows SVCCA read on an all-layer cache:
    the first ``n_tokens`` rows of its training split. A planning pass windows the slice as the
    writer will (rows per document, truncated to the budget), the reader's seeded document split
    is applied, and held-out documents are skipped. Without ``tokens``: the first ``n_tokens`` rows.
    ``timings["plan_seconds"]`` receives the planning pass's wall time.
    """
    from .corpus import open_corpus
    from .reader import eval_positions
    from .windows import fingerprint, paired_windows

    method = aligner if aligner != "auto" else ("identity" if fingerprint(source) == fingerprint(target)
                                                else "end-offsets")
    _, align = get_aligner(method, source, target)
    budget: list[int] | None = None
    skip: set[int] = set()
    t0 = time.perf_counter()
    if tokens is not None:
        budget, total = [], 0
        for rec in open_corpus(corpus, start=doc_start, limit=max_docs, cache_dir=corpus_cache_dir):
            rows = min(sum(len(w.idx_source) for w in paired_windows(rec["text"], source, target, context_size,
                                                                   aligner=align)), tokens - total)
            budget.append(rows)
            total += rows
            if total >= tokens:
                break
        skip = set(int(i) for i in eval_positions(len(budget), eval_fraction, split_seed))
    if timings is not None:
        timings["plan_seconds"] = time.perf_counter() - t0
    wins, have = [], 0
    for pos, rec in enumerate(open_corpus(corpus, start=doc_start, limit=max_docs, cache_dir=corpus_cache_dir)):
        if budget is not None and pos >= len(budget):
            break
        if pos in skip:
            continue
        left = budget[pos] if budget is not None else n_tokens
        for w in paired_windows(rec["text"], source, target, context_size, aligner=align):
            keep = min(len(w.idx_source), n_tokens - have, left)
            if keep > 0:
                wins.append((w, keep))
                have += keep
                left -= keep
        if have >= n_tokens:
            break
    if have == 0:
        raise CacheError(f"corpus {corpus!r} gave no aligned tokens for the SVCCA probe")
    none = lambda t: None  # noqa: E731
    acts_a = _forward(source, [w.source for w, _ in wins], [source_layer], batch_size, none)
    acts_b = _forward(target, [w.target for w, _ in wins], target_layers, batch_size, none)
    xa = np.concatenate([a[source_layer][w.idx_source[:k]] for (w, k), a in zip(wins, acts_a)])
    xb = {l: np.concatenate([b[l][w.idx_target[:k]] for (w, k), b in zip(wins, acts_b)]) for l in target_layers}
    return xa, xb


def svcca_probe(source: ModelAdapter, target: ModelAdapter, *, source_layer: int, n_tokens: int,
                candidates: list[int] | None = None, **kw) -> dict:
    """Run the probe and choose ``lB``: ``{method, source_layer, target_layer, tokens, profile, seconds}``."""
    from ..stitch.svcca import choose_layer

    t0 = time.perf_counter()
    candidates = list(range(target.n_layers)) if candidates is None else list(candidates)
    timings: dict = {}
    xa, xb = probe_rows(source, target, n_tokens=n_tokens, source_layer=source_layer, target_layers=candidates,
                        timings=timings, **kw)
    best, profile = choose_layer(xa, xb)
    return {"method": "svcca", "source_layer": int(source_layer), "target_layer": int(best),
            "tokens": int(xa.shape[0]), "profile": {str(l): float(v) for l, v in profile.items()},
            "seconds": time.perf_counter() - t0, "plan_seconds": timings.get("plan_seconds", 0.0)}


def stored_selection(path: str | Path) -> dict | None:
    """The ``layer_selection`` record of a finished cache (``None`` if it was not layer-selected)."""
    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs.get(SELECTION_ATTR)
    return None if raw is None else json.loads(raw)


def build_selected_cache(path: str | Path, source: ModelAdapter, target: ModelAdapter, *,
                         target_layers: list[int] | str | None = None, svcca_tokens: int = SVCCA_TOKENS,
                         source_layers: list[int] | None = None, log: Callable[[str], None] | None = None,
                         **kw) -> tuple[Path, dict | None]:
    """:func:`build_cache` with ``target_layers``: a list (cached as given), ``"all"`` (every layer),
    or ``None``/``"svcca"`` (an SVCCA probe on ``svcca_tokens`` tokens picks the one target layer).

    Returns ``(path, selection)``; ``selection`` is ``None`` unless a probe chose the layer. A finished
    layer-selected cache with the same settings is reused without re-running the probe.
    """
    log = log or (lambda m: None)
    if target_layers == "all":
        return build_cache(path, source, target, source_layers=source_layers, target_layers=None, log=log, **kw), None
    if target_layers not in (None, "svcca"):
        if isinstance(target_layers, str):
            raise CacheError(f"cache target_layers must be a list of layers, 'all' or 'svcca', not {target_layers!r}")
        return build_cache(path, source, target, source_layers=source_layers, target_layers=target_layers,
                           log=log, **kw), None
    if svcca_tokens < 2:
        raise CacheError(f"svcca_tokens must be at least 2, not {svcca_tokens}")
    src = sorted(set(source_layers)) if source_layers else [source.n_layers // 2]
    lA = src[len(src) // 2]  # the stitch's default source layer among those cached (stitch.api.resolve_layers)
    corpus, doc_start = kw.get("corpus", "wiki-en"), kw.get("doc_start", 0)
    path = Path(path)
    if path.exists():  # a finished selected cache: its content config minus the chosen layer must match
        wanted = cache_config(source, target, corpus=corpus, doc_start=doc_start, max_docs=kw.get("max_docs"),
                              tokens=kw.get("tokens", 200_000), context_size=kw.get("context_size", 128),
                              source_layers=src, target_layers=[0], dtype=kw.get("dtype", "float32"),
                              aligner=kw.get("aligner", "auto"), shard_rows=kw.get("shard_rows"))
        wanted.pop("_row_bytes")
        for key in ("target_layers", "shard_rows"):  # both follow from the chosen layer
            wanted.pop(key)
        try:
            if check_existing(path, wanted):
                sel = stored_selection(path)
                if sel and sel.get("tokens_requested") == svcca_tokens and sel.get("source_layer") == lA:
                    log(f"cache {path}: target layer {sel['target_layer']} was chosen by SVCCA when it was built")
                    out = build_cache(path, source, target, source_layers=src, target_layers=[sel["target_layer"]],
                                      log=log, extra_attrs={SELECTION_ATTR: json.dumps(sel, sort_keys=True)},
                                      **kw)  # verifies the shards, reuses or repairs
                    return out, sel
        except CacheError:
            pass  # an incomplete or different cache: build_cache below refuses or resumes it as usual
    log(f"SVCCA probe: {svcca_tokens:,} tokens, {source.name} layer {lA} vs all {target.n_layers} layers "
        f"of {target.name}")
    sel = None
    if dist.is_main():  # under torchrun rank 0 probes and every rank caches its choice
        sel = svcca_probe(source, target, source_layer=lA, n_tokens=svcca_tokens, corpus=corpus,
                          doc_start=doc_start, context_size=kw.get("context_size", 128),
                          batch_size=kw.get("batch_size", 8), aligner=kw.get("aligner", "auto"),
                          corpus_cache_dir=kw.get("corpus_cache_dir"), tokens=kw.get("tokens", 200_000),
                          max_docs=kw.get("max_docs"), eval_fraction=kw.get("eval_fraction", 0.1),
                          split_seed=kw.get("split_seed", 0))
        sel["tokens_requested"] = int(svcca_tokens)
    sel = dist.broadcast_object(sel)
    log(f"SVCCA probe chose {target.name} layer {sel['target_layer']} "
        f"({sel['profile'][str(sel['target_layer'])]:.3f}; {sel['seconds']:.1f} s)")
    out = build_cache(path, source, target, source_layers=src, target_layers=[sel["target_layer"]], log=log,
                      extra_attrs={SELECTION_ATTR: json.dumps(sel, sort_keys=True)}, **kw)
    return out, sel


def layer_request(cache_cfg, stitch_cfg) -> tuple[list[int] | None, list[int] | str | None]:
    """``(source_layers, target_layers)`` to cache for a run: the stitch's layers unless the cache
    section names layers; ``None`` target layers (stitch.target_layer 'auto') mean the SVCCA probe."""
    source_layers = cache_cfg.source_layers
    if source_layers is None and stitch_cfg.source_layer is not None:
        source_layers = [stitch_cfg.source_layer]
    target_layers = cache_cfg.target_layers
    if target_layers is None and stitch_cfg.target_layer != "auto":
        target_layers = [int(stitch_cfg.target_layer)]
    return source_layers, target_layers


def cache_stage(cfg, path: str | Path, model: Callable[[str], ModelAdapter], progress: bool = True,
                log: Callable[[str], None] | None = None) -> dict:
    """The run pipeline's cache stage for a :class:`~stitchplug.config.RunConfig`: build (or reuse)
    the layer-selected cache at ``path`` and return the stage's JSON result."""
    from .reader import open_cache

    c = cfg.cache
    source_layers, target_layers = layer_request(c, cfg.stitch)
    out, sel = build_selected_cache(path, model("source"), model("target"), target_layers=target_layers,
                                    svcca_tokens=cfg.stitch.svcca_tokens, source_layers=source_layers,
                                    corpus=c.corpus, doc_start=c.doc_start, max_docs=c.max_docs, tokens=c.tokens,
                                    context_size=c.context_size, dtype=c.dtype, batch_size=c.batch_size,
                                    aligner="auto", eval_fraction=c.eval_fraction, split_seed=cfg.seed,
                                    progress=progress, log=log)
    with open_cache(out) as cache:
        ra, rb = cache.alignment_rate
        return {"path": str(out), "n_tokens": int(cache.n_tokens), "alignment_rate": {"source": ra, "target": rb},
                "source_layers": list(cache.source_layers), "target_layers": list(cache.target_layers),
                "layer_selection": sel}
