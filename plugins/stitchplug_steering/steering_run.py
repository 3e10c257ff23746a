"""The whole steering experiment on a stitched pair: statistics, vectors, arms, evaluation, files.

Inputs are two model sides (adapter + layer + massive dims), the stitch and a
:class:`~stitchplug_steering.config.SteeringConfig`; outputs go to one folder:

- ``stats_A.*``, ``stats_B.*``  mean residual per language (+ English covariance), per model
- ``vectors.safetensors`` + ``vectors.json``  every arm's unit vector with its z and projections
- ``generations.jsonl``  every prompt and continuation per arm, with detected language and loss
- ``steering.json``  the metrics (also returned)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ._core import write_json_atomic, write_text_atomic
from .arms import Side, build_arms
from .config import SteeringConfig
from .data import build_prompts, parallel_pairs
from .evaluate import evaluate_arms
from .vector import LanguageStats, language_stats, texts_key


def vector_texts(cfg: SteeringConfig, seed: int) -> tuple[dict[str, list[str]], set[str]]:
    """Texts per language for the statistics (English = the union of each pair's English lead) and
    the titles used (kept out of the evaluation prompts)."""
    texts: dict[str, list[str]] = {"en": []}
    titles: set[str] = set()
    seen_en: set[str] = set()
    for lang in cfg.languages:
        pairs = parallel_pairs(lang, cfg.vector_docs, seed)
        texts[lang] = [p[1] for p in pairs]
        for title, _, en in pairs:
            titles.add(title)
            if title not in seen_en:
                seen_en.add(title)
                texts["en"].append(en)
    return texts, titles


def stats_for(side_key: str, adapter, layer: int, massive: list[int], texts, cfg: SteeringConfig,
              folder: Path, log: Callable[[str], None]) -> LanguageStats:
    name = f"stats_{side_key}"
    path = folder / f"{name}.json"
    if path.exists():
        st = LanguageStats.load(folder, name)
        if st.model == adapter.name and st.layer == layer and st.texts_key == texts_key(texts, cfg.vector_tokens):
            return st
    log(f"  steering: residual means per language on {adapter.name} layer {layer}")
    st = language_stats(adapter, layer, texts, cfg.vector_tokens, massive)
    st.save(folder, name)
    return st


def run_steering(sides_in: dict[str, tuple], stitch, cfg: SteeringConfig, folder: str | Path, seed: int = 0,
                 log: Callable[[str], None] = print) -> dict:
    """``sides_in[key] = (adapter, layer, massive_dims)`` for keys ``"A"`` (source) and ``"B"``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts, titles = vector_texts(cfg, seed)
    sides = {k: Side(k, a, int(layer), stats_for(k, a, int(layer), list(m), texts, cfg, folder, log), list(m))
             for k, (a, layer, m) in sides_in.items()}
    arms = build_arms(sides, stitch, cfg.languages, list(cfg.directions), cfg.z_mode, cfg.z_scale,
                      cfg.exclude_massive, seed)
    arms = [a for a in arms if a.kind in cfg.arms]
    save_file({a.label: a.v.float().contiguous() for a in arms if a.v is not None}, str(folder / "vectors.safetensors"))
    write_json_atomic(folder / "vectors.json", {a.label: {"z": a.z, "z_en": a.z_en, **a.info} for a in arms if a.v is not None})
    prompts = build_prompts(cfg.prompts, cfg.n_prompts, cfg.prompt_words, titles, seed)
    res = evaluate_arms(sides, arms, prompts, cfg.languages, intervention=cfg.intervention,
                        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed,
                        detector=cfg.detector, agreement_detector=cfg.agreement_detector,
                        fluency=cfg.fluency, log=log)
    gens = res.pop("generations")
    write_text_atomic(folder / "generations.jsonl", _jsonl((label, r) for label, rows in gens.items() for r in rows))
    res["config"] = cfg.model_dump(mode="json")
    res["vector_tokens"] = {k: s.stats.n_tokens for k, s in sides.items()}
    res["models"] = {k: {"name": s.adapter.name, "layer": s.layer, "massive_dims": s.massive_dims}
                     for k, s in sides.items()}
    res["n_prompts"] = {src: sum(p["source"] == src for p in prompts) for src in dict.fromkeys(p["source"] for p in prompts)}
    write_json_atomic(folder / "steering.json", res)
    return res


def context_stats(context, cfg: SteeringConfig) -> LanguageStats:
    """Language statistics of ``context``'s model at its layer, computed once per run folder (kept
    under ``artifacts/steering/stats``) and per context (``context.memo``)."""
    texts, _ = vector_texts(cfg, context.seed)
    key = ("steering_stats", texts_key(texts, cfg.vector_tokens))
    if key in context.memo:
        return context.memo[key]
    side = "A" if context.side == "source" else "B"
    folder = context.folder.artifact("steering", "stats") if context.folder is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        st = stats_for(side, context.adapter, int(context.layer), list(context.massive_dims), texts, cfg, folder,
                       lambda m: None)
    else:
        st = language_stats(context.adapter, int(context.layer), texts, cfg.vector_tokens, context.massive_dims)
    context.memo[key] = st
    return st


_PROMPTS: dict[str, list[dict]] = {}


def prompts_for(cfg: SteeringConfig, seed: int) -> list[dict]:
    """The evaluation prompts of ``cfg`` (disjoint from its vector set), cached per process."""
    key = json.dumps([cfg.languages, cfg.vector_docs, cfg.prompts, cfg.n_prompts, cfg.prompt_words, seed])
    if key not in _PROMPTS:
        _, titles = vector_texts(cfg, seed)
        _PROMPTS[key] = build_prompts(cfg.prompts, cfg.n_prompts, cfg.prompt_words, titles, seed)
    return _PROMPTS[key]


def _jsonl(rows) -> str:
    return "".join(json.dumps({"arm": label, **r}, ensure_ascii=False) + "\n" for label, r in rows)


def write_generations(folder: str | Path, gens: dict[str, list[dict]]) -> None:
    """One ``<arm label>.jsonl`` per arm (``/`` in labels becomes ``_``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for label, rows in gens.items():
        write_text_atomic(folder / (label.replace("/", "_") + ".jsonl"), _jsonl((label, r) for r in rows))


def read_generations(folder: str | Path) -> dict[str, list[dict]]:
    """Generations by arm from ``generations.jsonl`` and/or ``generations/*.jsonl`` under ``folder``."""
    out: dict[str, list[dict]] = {}
    folder = Path(folder)
    files = [folder / "generations.jsonl"] + sorted((folder / "generations").glob("*.jsonl"))
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            out.setdefault(r.pop("arm"), []).append(r)
    return out
