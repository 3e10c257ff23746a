"""High-level stitch stages on a paired activation cache: pick layers, train, evaluate.

These are what the CLI and the run pipeline call. They take a cache object with the reader's
interface (``source_layers``, ``target_layers``, ``d_source``, ``d_target``, ``attrs``,
``array(side, layer, split)``, ``batches(...)``) and return plain dicts ready for JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import StitchConfig
from ..errors import StageError
from ..hooks import resid_hook
from .data import CacheSource, limit_tokens
from .evaluate import evaluate_recon
from .fit import fit_stitch
from .model import Stitch
from .svcca import choose_layer_from_cache


def open_cache(path: str | Path, cfg=None):
    """The cache helper's reader (one-line error if it is missing).

    With a run config ``cfg``, an explicitly given ``cache.eval_fraction`` or ``seed`` overrides the
    document split stored in the cache (as ``stitchplug run`` does); values left at their defaults keep it.
    """
    try:
        from ..cache.reader import open_cache as _open
    except ImportError as exc:  # pragma: no cover - only before the cache package exists
        raise StageError(f"the activation cache reader is not available ({exc})") from None
    kw = {}
    if cfg is not None:
        if "eval_fraction" in cfg.cache.model_fields_set:
            kw["eval_fraction"] = cfg.cache.eval_fraction
        if "seed" in cfg.model_fields_set:
            kw["split_seed"] = cfg.seed
    return _open(path, **kw)


def _attr(cache, *names, default=None):
    attrs = getattr(cache, "attrs", {}) or {}
    for n in names:
        if n in attrs and attrs[n] is not None:
            return attrs[n]
    return default


def resolve_layers(cache, cfg: StitchConfig) -> tuple[int, int | str]:
    """Source layer from cfg (None: the cache's only or middle source layer); target as given."""
    src = list(cache.source_layers)
    lA = cfg.source_layer
    if lA is None:
        lA = src[len(src) // 2] if src else None
    if lA is None or lA not in src:
        raise StageError(f"source layer {lA} is not in the cache (cached source layers: {src})")
    lB = cfg.target_layer
    if lB != "auto" and lB not in list(cache.target_layers):
        raise StageError(f"target layer {lB} is not in the cache (cached target layers: {list(cache.target_layers)})")
    return int(lA), lB


def pair_meta(cache, lA: int, lB: int) -> dict[str, Any]:
    """Metadata recorded in the stitch sidecar (models, layers, hook names, widths)."""
    return {
        "source_model": _attr(cache, "source_model", "source"),
        "target_model": _attr(cache, "target_model", "target"),
        "source_layer": lA,
        "target_layer": lB,
        "source_hook": resid_hook(lA),
        "target_hook": resid_hook(lB),
        "d_source": int(cache.d_source),
        "d_target": int(cache.d_target),
    }


def choose_layers(cache, cfg: StitchConfig) -> dict[str, Any]:
    """SVCCA layer choice: the probe stored by a layer-selected cache (same source layer and token
    count), else SVCCA over the cache's target layers."""
    import json

    lA, _ = resolve_layers(cache, cfg)
    raw = _attr(cache, "layer_selection")
    sel = json.loads(raw) if raw else None
    if sel and sel.get("source_layer") == lA and sel.get("tokens_requested") == cfg.svcca_tokens \
            and sel.get("target_layer") in list(cache.target_layers):
        return {"source_layer": lA, "best_target_layer": int(sel["target_layer"]),
                "profile": {int(k): v for k, v in sel["profile"].items()}, "from": "cache probe",
                "tokens": sel.get("tokens"), "seconds": sel.get("seconds")}
    best, profile = choose_layer_from_cache(cache, lA, cfg.svcca_tokens)
    return {"source_layer": lA, "best_target_layer": best, "profile": profile}


def train(cache, cfg: StitchConfig, out: str | Path, seed: int = 0, max_steps: int | None = None,
          progress: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Choose lB if 'auto', fit with cfg.solver (data passes on ``device``), evaluate on the held-out
    split, save. Returns results."""
    lA, lB = resolve_layers(cache, cfg)
    svcca = None
    if lB == "auto":
        svcca = choose_layers(cache, cfg)
        lB = svcca["best_target_layer"]
    from .. import dist

    rank, world = dist.rank_world()  # under torchrun: each rank reads its share of every batch
    src = CacheSource(cache, lA, lB, cfg.batch_size, split="train", shuffle=True, seed=seed,
                      part=(rank, world) if world > 1 else None)
    src = limit_tokens(src, cfg.fit_tokens, cfg.batch_size)
    result = fit_stitch(src, int(cache.d_source), int(cache.d_target), cfg, seed=seed, max_steps=max_steps,
                        progress=progress, refine_iters=cfg.refine_iters, device=device)
    held = CacheSource(cache, lA, lB, 8192, split="eval", shuffle=False)
    recon = evaluate_recon(result.stitch, held, cfg.alpha)
    meta = pair_meta(cache, lA, lB)
    meta.update({k: v for k, v in result.info.items() if k != "history"})
    meta["eval_loss"] = recon["loss"]
    meta["massive_dims"] = recon["massive_dims"]
    path = result.stitch.save(out, meta) if rank == 0 else Path(out)
    dist.barrier()
    return {"stitch": str(path), "fit": result.info, "recon": recon, "svcca": svcca, "meta": meta}


def evaluate(cache, stitch_path: str | Path, cfg: StitchConfig) -> dict[str, Any]:
    """Held-out reconstruction metrics of a saved stitch on a cache of the same pair and layers."""
    stitch = Stitch.load(stitch_path)
    lA, lB = int(stitch.meta["source_layer"]), int(stitch.meta["target_layer"])
    keys = ("source_model", "target_model", "source_layer", "target_layer", "d_source", "d_target")
    expect = {k: v for k, v in pair_meta(cache, lA, lB).items() if k in keys and v is not None}
    stitch = Stitch.load(stitch_path, expect=expect)
    held = CacheSource(cache, lA, lB, 8192, split="eval", shuffle=False)
    return {"stitch": str(stitch_path), "recon": evaluate_recon(stitch, held, cfg.alpha), "meta": stitch.meta}


def heldout_texts(cfg_cache, cache, n_docs: int, doc_start: int | None = None) -> list[str]:
    """The texts of :func:`~stitchplug.cache.corpus.heldout_documents`."""
    from ..cache.corpus import heldout_documents

    return [d["text"] for d in heldout_documents(cache, n_docs, doc_start=doc_start, cache_config=cfg_cache)]


def stitched_ce_eval(stitch: Stitch, source_model, target_model, texts: list[str], context_size: int) -> dict[str, Any]:
    """Table-1 losses of ``stitch`` on ``texts`` with loaded adapters (layers from the sidecar)."""
    from .stitched_ce import stitched_ce, windows_for_texts

    lA, lB = int(stitch.meta["source_layer"]), int(stitch.meta["target_layer"])
    for adapter, d, key in ((source_model, stitch.d_source, "source"), (target_model, stitch.d_target, "target")):
        if adapter.d_model != d:
            raise StageError(f"stitch {key} width is {d} but model {adapter.name!r} has d_model {adapter.d_model}")
    windows = windows_for_texts(texts, source_model, target_model, context_size)
    if not windows:
        raise StageError("no held-out text to evaluate the stitched loss on")
    return stitched_ce(source_model, target_model, stitch, lA, lB, windows)
