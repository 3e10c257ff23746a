"""``stitchplug experiment steering-fit``: steering transfer as a function of the stitch's fitting text.

Layout under the experiment root (every write through :class:`stitchplug.api.RunFolder`)::

    ROOT/fits/<fitting>-<tokens>/      one run folder per fitting text and size: the cache and
                                       stitch stages of `stitchplug run` (reused; a later
                                       `stitchplug run --artifact steering` there reuses them too)
    ROOT/steering_fit/heldout.json     the held-out draws (vector titles, prompts, FVU titles),
                                       the split coverage per component and the measured overlaps
    ROOT/steering_fit/stats/           language statistics of A and B at the stitch layers
    ROOT/steering_fit/arms/*.json      one file per evaluated arm (resume: reused when unchanged)
    ROOT/metrics.json, ROOT/report.md  the ``steering_fit`` section

Steps: fit every (fitting text, size) folder, the first with the layer choice its config makes and
the others pinned to the same layers (so every stitch maps the same pair of residual streams); draw
the held-out text outside *every* folder's training documents; language statistics; the shared
arms; each stitch's arms and its FVU on held-out en/fr/es tokens; then the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ._core import RunFolder, Stitch, fit_run_folder, load_model, write_json_atomic
from .arms import Side
from .fitexp_arms import evaluate_one, heldout_pairs, shared_arms, stitch_arms, stitch_fvu
from .fitexp_config import SteeringFitConfig, folder_name
from .fitexp_report import markdown, summarise
from .heldout import assert_disjoint, overlaps, require_heldout, select_heldout, split_coverage, split_docs
from .vector import LanguageStats, language_stats, texts_key


def fit_all(root: Path, cfg: SteeringFitConfig, log: Callable[[str], None], models: dict | None = None) -> list[dict]:
    """Build (or reuse) every stitch folder; returns ``[{corpus, tokens, folder, meta, ...}]``.
    ``models`` (``{name: adapter}``) is shared by the fits (each model loads once)."""
    fits, pin = [], {}
    for tokens in cfg.sizes:
        for corpus in cfg.fitting:
            folder = root / "fits" / folder_name(corpus, tokens)
            over = {"seed": cfg.seed, **cfg.run_overrides, "cache.corpus": corpus, "cache.tokens": int(tokens), **pin}
            log(f"[steering-fit] stitch on {corpus} ({tokens:,} tokens) in {folder}")
            res = fit_run_folder(str(folder), preset=cfg.preset, overrides=over, log=log, models=models)
            meta = res["stitch"]["meta"]
            if not pin:
                pin = {"stitch.source_layer": int(meta["source_layer"]), "stitch.target_layer": int(meta["target_layer"])}
            fits.append({"corpus": corpus, "tokens": int(tokens), "folder": str(folder), "meta": meta,
                         "n_tokens": res["cache"]["n_tokens"], "models": res["config"]["models"],
                         "context_size": res["config"]["cache"]["context_size"],
                         "recon_fvu": {k: res["stitch"]["recon"][k]["fvu"] for k in ("up", "down")}})
    return fits


def fitted_docs(fits: list[dict]) -> tuple[set, dict]:
    """The union of every folder's training documents, and each folder's split coverage."""
    fitted, coverage = set(), {}
    for f in fits:
        rf = RunFolder(f["folder"])
        with rf.open_cache() as cache:
            fitted |= split_docs(cache, f["corpus"], "train")
            coverage[f["folder"]] = split_coverage(cache, f["corpus"])
        require_heldout(f["folder"], coverage[f["folder"]])
    return fitted, coverage


def _stats(rf: RunFolder, key: str, adapter, layer: int, texts, tokens: int, log) -> LanguageStats:
    folder = rf.path("steering_fit", "stats")
    want = texts_key(texts, tokens)
    if (folder / f"stats_{key}.json").exists():
        st = LanguageStats.load(folder, f"stats_{key}")
        if st.model == adapter.name and st.layer == layer and st.texts_key == want:
            return st
    log(f"  language statistics of {adapter.name} at layer {layer}")
    st = language_stats(adapter, layer, texts, tokens)
    st.save(folder, f"stats_{key}")
    return st


def _pairs(rf: RunFolder, adapters, layers, texts: list[str], context: int, lang: str):
    from safetensors.torch import load_file, save_file

    path = rf.path("steering_fit", "fvu", f"pairs_{lang}.safetensors")
    key = texts_key({lang: texts}, context) + f":{layers['A']}:{layers['B']}:{adapters['A'].name}:{adapters['B'].name}"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists() and json.loads(meta.read_text()).get("key") == key:
        t = load_file(str(path))
        return t["A"], t["B"]
    hA, hB = heldout_pairs(adapters, layers, texts, context)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"A": hA.contiguous(), "B": hB.contiguous()}, str(path))
    write_json_atomic(meta, {"key": key, "n_tokens": int(hA.shape[0])})
    return hA, hB


def run_experiment(root: str | Path, cfg: SteeringFitConfig, log: Callable[[str], None] = print,
                   device: str = "cpu") -> dict:
    root = Path(root)
    rf = RunFolder(root)
    with rf.writing("stitchplug experiment steering-fit"):
        models: dict = {}
        fits = fit_all(root, cfg, log, models)
        fitted, coverage = fitted_docs(fits)
        held = select_heldout(fitted, cfg.languages, cfg.vector_docs, cfg.n_prompts, cfg.prompt_words,
                              cfg.fvu_docs, cfg.seed)
        counts = overlaps(held, fitted)
        write_json_atomic(rf.path("steering_fit", "heldout.json"), {
            "vector_titles": {L: [t for t, _, _ in p] for L, p in held.pairs.items()}, "prompts": held.prompts,
            "fvu_titles": held.fvu_titles, "coverage": coverage, "overlaps": counts,
            "fitted_documents": len(fitted)})
        assert_disjoint(counts)
        m0 = fits[0]["meta"]
        layers = {"A": int(m0["source_layer"]), "B": int(m0["target_layer"])}
        names = {"A": fits[0]["models"]["source"], "B": fits[0]["models"]["target"]}
        adapters = {}
        for k, n in names.items():
            if n not in models:
                log(f"[steering-fit] loading {n}")
                models[n] = load_model(n, device=device)
            adapters[k] = models[n]
        texts = held.vector_texts()
        stats = {k: _stats(rf, k, adapters[k], layers[k], texts, cfg.vector_tokens, log) for k in ("A", "B")}
        sides = {k: Side(k, adapters[k], layers[k], stats[k]) for k in ("A", "B")}
        settings = {k: getattr(cfg, k) for k in ("intervention", "max_new_tokens", "seed", "detector",
                                                  "agreement_detector", "fluency")}
        pairs = {L: _pairs(rf, adapters, layers, held.fvu_texts[L], fits[0]["context_size"], L)
                 for L in ["en", *cfg.languages]}
        arms: dict[str, dict] = {}
        log("[steering-fit] shared arms (none, native)")
        for label, arm in shared_arms(stats, cfg.languages, cfg.z_mode, cfg.z_scale):
            arms[label] = evaluate_one(rf, label, arm, sides, held.prompts, cfg.languages, settings, log)
        for f in fits:
            stitch = Stitch.load(Path(f["folder"]) / "stitch" / "stitch.safetensors")
            mm = stitch.meta.get("massive_dims", {}) or {}
            massive = {"A": list(mm.get("source", [])), "B": list(mm.get("target", []))}
            f["massive_dims"] = massive
            f["fvu"] = {L: stitch_fvu(stitch, hA, hB, massive) for L, (hA, hB) in pairs.items() if len(hA)}
            fit = folder_name(f["corpus"], f["tokens"])
            log(f"[steering-fit] arms through {fit}")
            for label, arm in stitch_arms(fit, stitch, stats, massive, cfg.languages, cfg.z_mode, cfg.z_scale,
                                          cfg.diagnose):
                arms[label] = evaluate_one(rf, label, arm, sides, held.prompts, cfg.languages, settings, log)
        result = summarise(cfg, fits, arms, coverage, counts, {k: s.n_tokens for k, s in stats.items()})
        rf.add_metrics("steering_fit", result)
        rf.add_report_section("steering_fit", markdown(result))
    return result

