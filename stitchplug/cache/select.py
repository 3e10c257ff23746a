"""Layer-selective caching: choose the target layer by SVCCA on a small first pass, then cache only it.

Caching every layer of B so that SVCCA can pick one costs ``n_layers`` times the disk of the one
layer used afterwards, and runs B's forward through all its blocks. Instead:

1. **plan**: the slice is windowed and cut into shards exactly as the writer will (the writer then
   uses these windows instead of tokenising again), which also gives the reader's document split;
2. **probe**: B runs through all its layers on ``svcca_tokens`` training-split rows taken from the
   writer's own forward batches (every k-th batch of the first shard, so that the rows spread over
   its documents and window lengths; further shards if the first is too small), and A on the whole
   shard, all in the writer's batches;
3. :func:`~stitchplug.stitch.svcca.choose_layer` picks ``lB`` on those rows;
4. :func:`~stitchplug.cache.writer.build_cache` caches the source layer(s) and ``lB`` only, each
   model's forward stopping right after its last cached layer. Batches the probe ran are not run
   again: the same batch composition gives the same bits, so the cache is bit-identical to one built
   with ``lB`` given explicitly, and the probe costs only B's layers above ``lB`` on its rows.

The probe (tokens, profile, chosen layer, batches, seconds) is stored in the cache's
``layer_selection`` attribute (JSON) and returned, so the stitch stage and the report show the full
profile; every shard carries it too, so an interrupted build resumes without probing again.
``target_layers="all"`` keeps the old behaviour (every layer cached, SVCCA on the cache).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .. import dist
from ..adapter import ModelAdapter
from ..config import SVCCA_TOKENS
from ..errors import CacheError
from .align import get_aligner
from .plan import Acts, Shard, batches, forward, group_shards, plan_docs, run_batch
from .writer import build_cache, cache_config, check_existing

SELECTION_ATTR = "layer_selection"
PLAN_KEEP_ROWS = 2_000_000
"""The plan keeps the windows of its leading shards up to this many rows for the writer (token ids,
offsets and alignment: tens of bytes per row); the writer tokenises the rest of a larger slice again."""


def plan_slice(source: ModelAdapter, target: ModelAdapter, *, corpus: str, doc_start: int, tokens: int,
               context_size: int, shard_rows: int, aligner: str = "auto", max_docs: int | None = None,
               corpus_cache_dir: str | None = None, keep_rows: int = PLAN_KEEP_ROWS) -> tuple[list[Shard], int]:
    """The slice windowed and cut into shards as :func:`~stitchplug.cache.writer.build_cache` will:
    ``(leading whole shards up to keep_rows rows, number of documents in the slice)``."""
    from .corpus import open_corpus

    _, align = get_aligner(aligner, source, target)
    records = open_corpus(corpus, start=doc_start, limit=max_docs, cache_dir=corpus_cache_dir)
    kept, n_docs, rows = [], 0, 0
    for shard in group_shards(plan_docs(records, source, target, context_size, align, tokens=tokens,
                                        index0=doc_start), shard_rows):
        if rows < keep_rows:
            kept.append(shard)
        rows += shard.rows
        n_docs += len(shard.docs)
    return kept, n_docs


def probe_shards(source: ModelAdapter, target: ModelAdapter, shards: Iterable[Shard], *, held_out: set[int],
                 n_tokens: int, source_layers: list[int], source_layer: int, candidates: list[int],
                 batch_size: int) -> tuple[np.ndarray, dict[int, np.ndarray], dict, dict]:
    """SVCCA's rows, run in the writer's own batches: ``(xa [n, dA], {l: [n, dB]}, ready, info)``.

    Per shard, B's batches are taken every ``k``-th (``k`` = the shard's training rows // the rows
    still needed), then in order, until ``n_tokens`` rows of documents not in ``held_out`` (document
    indices); A runs on the whole shard. ``ready[shard][side]`` holds the computed windows
    (:func:`~stitchplug.cache.plan.forward`'s ``ready``); ``info`` the batches taken and the cache
    rows (``rows``: indices into the cache) the probe read.
    """
    none = lambda t: None  # noqa: E731
    xa: list[np.ndarray] = []
    xb: dict[int, list[np.ndarray]] = {l: [] for l in candidates}
    ready: dict[int, dict[str, dict[int, Acts]]] = {}
    info: dict = {"batches": {}, "rows": []}
    have, row0 = 0, 0
    for k, shard in enumerate(shards):
        if have >= n_tokens:
            break
        wins = shard.windows()
        train = [0 if d.index in held_out else keep for d, _, keep in wins]
        starts = np.concatenate([[0], np.cumsum([keep for _, _, keep in wins])])
        enc_b = [w.target for _, w, _ in wins]
        tb = batches(enc_b, batch_size)
        rows = [sum(train[i] for i in b) for b in tb]
        stride = max(1, sum(rows) // (n_tokens - have))
        order = list(range(0, len(tb), stride)) + [j for j in range(len(tb)) if j % stride]
        picked = []
        for j in order:
            if have >= n_tokens:
                break
            if rows[j]:
                picked.append(j)
                have += rows[j]
        if picked:
            acts_a = forward(source, [w.source for _, w, _ in wins], source_layers, batch_size, none)
            acts_b: dict[int, Acts] = {}
            for j in sorted(picked):
                acts_b.update(run_batch(target, enc_b, tb[j], candidates))
            for i in sorted(acts_b):  # row order
                if train[i]:
                    w = wins[i][1]
                    xa.append(acts_a[i][source_layer][w.idx_source[:train[i]]])
                    for l in candidates:
                        xb[l].append(acts_b[i][l][w.idx_target[:train[i]]])
                    info["rows"].append(row0 + np.arange(starts[i], starts[i] + train[i]))
            ready[k] = {"source": dict(enumerate(acts_a)), "target": acts_b}
            info["batches"][str(k)] = sorted(picked)
        row0 += shard.rows
    if have == 0:
        raise CacheError("the slice gave no aligned training-split tokens for the SVCCA probe")
    n = min(have, n_tokens)
    info["rows"] = np.concatenate(info["rows"])[:n]
    return (np.concatenate(xa)[:n], {l: np.concatenate(v)[:n] for l, v in xb.items()}, ready, info)


def svcca_probe(source: ModelAdapter, target: ModelAdapter, *, source_layer: int, n_tokens: int,
                source_layers: list[int] | None = None, candidates: list[int] | None = None, corpus: str = "wiki-en",
                doc_start: int = 0, tokens: int = 200_000, context_size: int = 128, batch_size: int = 8,
                aligner: str = "auto", max_docs: int | None = None, corpus_cache_dir: str | None = None,
                eval_fraction: float = 0.1, split_seed: int = 0, shard_rows: int | None = None,
                dtype: str = "float32") -> tuple[dict, list[Shard], dict]:
    """Plan the slice, run the probe and choose ``lB``.

    Returns ``(selection, planned shards, ready)``: ``selection`` is ``{method, source_layer,
    target_layer, tokens, profile, batches, seconds, plan_seconds, svcca_seconds}``; the shards and
    ``ready`` go to :func:`~stitchplug.cache.writer.build_cache` (``planned``/``ready``). ``shard_rows``
    ``None``: the shard size of a cache of ``source_layers`` and one target layer.
    """
    from ..stitch.svcca import choose_layer
    from .reader import eval_positions

    t0 = time.perf_counter()
    src = sorted(set(source_layers or [source_layer]))
    candidates = list(range(target.n_layers)) if candidates is None else list(candidates)
    if shard_rows is None:  # the shards of a cache with one target layer
        shard_rows = cache_config(source, target, corpus=corpus, doc_start=doc_start, max_docs=max_docs,
                                  tokens=tokens, context_size=context_size, source_layers=src, target_layers=[0],
                                  dtype=dtype, aligner=aligner, shard_rows=None)["shard_rows"]
    shards, n_docs = plan_slice(source, target, corpus=corpus, doc_start=doc_start, tokens=tokens,
                                context_size=context_size, shard_rows=shard_rows, aligner=aligner,
                                max_docs=max_docs, corpus_cache_dir=corpus_cache_dir)
    t_plan = time.perf_counter() - t0
    held_out = {doc_start + int(p) for p in eval_positions(n_docs, eval_fraction, split_seed)}
    xa, xb, ready, info = probe_shards(source, target, shards, held_out=held_out, n_tokens=n_tokens,
                                       source_layers=src, source_layer=source_layer, candidates=candidates,
                                       batch_size=batch_size)
    t1 = time.perf_counter()
    best, profile = choose_layer(xa, xb)
    for parts in ready.values():  # the writer needs the chosen layer only
        parts["target"] = {i: {best: acts[best]} for i, acts in parts["target"].items()}
    sel = {"method": "svcca", "source_layer": int(source_layer), "target_layer": int(best),
           "tokens": int(xa.shape[0]), "profile": {str(l): float(v) for l, v in profile.items()},
           "batches": info["batches"], "seconds": time.perf_counter() - t0, "plan_seconds": t_plan,
           "svcca_seconds": time.perf_counter() - t1}
    return sel, shards, {"ready": ready, "rows": info["rows"]}


def stored_selection(path: str | Path) -> dict | None:
    """The ``layer_selection`` record of a finished cache (``None`` if it was not layer-selected)."""
    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs.get(SELECTION_ATTR)
    return None if raw is None else json.loads(raw)


def shard_selection(path: str | Path, wanted: dict) -> dict | None:
    """The ``layer_selection`` an interrupted selected build stored in its first shard, if that shard
    verifies and matches ``wanted`` (content fields); else ``None``."""
    from . import integrity
    from .format import config_diff, open_h5, shard_dir, stored_config

    shard0 = shard_dir(path) / "shard_00000.h5"
    if not shard0.exists() or integrity.verify_shard(shard0) is not None:
        return None
    try:
        with open_h5(shard0, "cache shard") as f:
            cfg, raw = stored_config(f, shard0), f.attrs.get(SELECTION_ATTR)
    except CacheError:
        return None
    if raw is None or config_diff(cfg, wanted):
        return None
    sel = json.loads(raw)
    return sel if cfg.get("target_layers") == [sel.get("target_layer")] else None


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
    cfg = cache_config(source, target, corpus=corpus, doc_start=doc_start, max_docs=kw.get("max_docs"),
                       tokens=kw.get("tokens", 200_000), context_size=kw.get("context_size", 128),
                       source_layers=src, target_layers=[0], dtype=kw.get("dtype", "float32"),
                       aligner=kw.get("aligner", "auto"), shard_rows=kw.get("shard_rows"))
    # what a selected cache must match: the content config minus the chosen layer and the shard size
    wanted = {k: v for k, v in cfg.items() if k not in ("_row_bytes", "target_layers", "shard_rows")}
    sel = None
    if path.exists():  # a finished selected cache
        try:
            if check_existing(path, wanted):
                sel = stored_selection(path)
        except CacheError:
            pass  # an incomplete or different cache: build_cache below refuses or resumes it as usual
        found = "cache {path}: target layer {layer} was chosen by SVCCA when it was built"
    else:  # an interrupted build: its first shard records the choice, so resuming needs no new probe
        sel = shard_selection(path, wanted)
        found = "cache {path}: resuming with target layer {layer}, chosen by SVCCA when it started"
    planned, ready = None, None
    if sel and sel.get("tokens_requested") == svcca_tokens and sel.get("source_layer") == lA:
        log(found.format(path=path, layer=sel["target_layer"]))
    else:
        log(f"SVCCA probe: {svcca_tokens:,} tokens, {source.name} layer {lA} vs all {target.n_layers} layers "
            f"of {target.name}")
        sel = None
        if dist.is_main():  # under torchrun rank 0 probes and every rank caches its choice
            sel, shards, extra = svcca_probe(
                source, target, source_layer=lA, source_layers=src, n_tokens=svcca_tokens, corpus=corpus,
                doc_start=doc_start, context_size=kw.get("context_size", 128), batch_size=kw.get("batch_size", 8),
                aligner=cfg["alignment_method"], corpus_cache_dir=kw.get("corpus_cache_dir"),
                tokens=kw.get("tokens", 200_000), max_docs=kw.get("max_docs"),
                eval_fraction=kw.get("eval_fraction", 0.1), split_seed=kw.get("split_seed", 0),
                shard_rows=cfg["shard_rows"])
            sel["tokens_requested"] = int(svcca_tokens)
            planned, ready = [d for s in shards for d in s.docs], extra["ready"]
        sel = dist.broadcast_object(sel)
        log(f"SVCCA probe chose {target.name} layer {sel['target_layer']} "
            f"({sel['profile'][str(sel['target_layer'])]:.3f}; {sel['seconds']:.1f} s)")
    # a reused cache is verified (and repaired or resumed) by build_cache like any other
    out = build_cache(path, source, target, source_layers=src, target_layers=[sel["target_layer"]], log=log,
                      extra_attrs={SELECTION_ATTR: json.dumps(sel, sort_keys=True)}, planned=planned,
                      ready=ready, **kw)
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
                                    aligner=c.aligner, eval_fraction=c.eval_fraction, split_seed=cfg.seed,
                                    queue_depth=c.queue_depth, host_workers=c.host_workers, progress=progress,
                                    log=log)
    with open_cache(out) as cache:
        ra, rb = cache.alignment_rate
        return {"path": str(out), "n_tokens": int(cache.n_tokens), "alignment_rate": {"source": ra, "target": rb},
                "source_layers": list(cache.source_layers), "target_layers": list(cache.target_layers),
                "layer_selection": sel, "queue_depth": c.queue_depth}
