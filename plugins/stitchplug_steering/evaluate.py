"""Generate under every arm, detect the language, score fluency, aggregate with exact intervals."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .arms import Side, SteerArm
from .detect import agreement, detect_all
from .intervene import make_patch
from .stats import relative_transfer_gap, share


GEN_BATCH = 16
"""Greedy prompts decoded together (``ModelAdapter.generate_many``); the texts do not depend on it."""


def generate(side: Side, arm: SteerArm, prompts: Sequence[str], intervention: str, max_new_tokens: int,
             temperature: float, seed: int, progress: Callable[[], None] | None = None) -> list[str]:
    patches = None
    if arm.kind != "none":
        patches = {side.layer: make_patch(intervention, arm.v, arm.z, arm.z_en)}
    # prompt i keeps seed + i whatever the batching
    out = side.adapter.generate_many(list(prompts), max_new_tokens=max_new_tokens, patches=patches,
                                     temperature=temperature, seed=seed, batch_size=GEN_BATCH)
    if progress:
        for _ in out:
            progress()
    return out


@torch.no_grad()
def continuation_loss(adapter, prompt: str, continuation: str) -> float | None:
    """Mean next-token loss (nats/token) of the *unsteered* model on the continuation's tokens."""
    if not continuation.strip():
        return None
    enc = adapter.encode(prompt + continuation)
    ids = enc.ids[None]
    losses = adapter.token_losses(ids)[0]  # position t predicts token t + 1
    target_ends = enc.ends[1:]
    keep = (target_ends > len(prompt)) & ~enc.special[1:]
    if not bool(keep.any()):
        return None
    return float(losses[keep].mean())


def _median(xs: list[float]) -> float | None:
    xs = sorted(x for x in xs if x is not None and math.isfinite(x))
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else 0.5 * (xs[m - 1] + xs[m])


def evaluate_arms(sides: dict[str, Side], arms: list[SteerArm], prompts: list[dict], languages: list[str], *,
                  intervention: str = "clamp", max_new_tokens: int = 40, temperature: float = 0.0,
                  seed: int = 0, detector: str = "langdetect", agreement_detector: str = "none",
                  fluency: bool = True, log: Callable[[str], None] = print) -> dict:
    """Every arm on every prompt. Returns ``{"arms": {label: metrics}, "generations": {label: [...]},
    "gaps": ..., "agreement": ...}``."""
    texts = [p["text"] for p in prompts]
    out_arms, gens, all_a, all_b, all_lang = {}, {}, [], [], []
    for arm in arms:
        side = sides[arm.side]
        log(f"  steering: {arm.label} ({len(texts)} prompts x {max_new_tokens} tokens)")
        cont = generate(side, arm, texts, intervention, max_new_tokens, temperature, seed)
        labels = detect_all(cont, detector)
        other = detect_all(cont, agreement_detector) if agreement_detector not in ("none", detector) else None
        losses = [continuation_loss(side.adapter, p, c) for p, c in zip(texts, cont)] if fluency else []
        rec: dict = {"model": side.adapter.name, "layer": side.layer, "kind": arm.kind, "lang": arm.lang,
                     "direction": arm.direction, "n": len(cont), "info": arm.info}
        langs = [arm.lang] if arm.lang else list(languages)
        rec["share"] = {L: share(sum(x == L for x in labels), len(labels)) for L in langs}
        rec["share_en"] = share(sum(x == "en" for x in labels), len(labels))
        counts: dict[str, int] = {}
        for x in labels:
            counts[x] = counts.get(x, 0) + 1
        rec["labels"] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
        if fluency:
            vals = [x for x in losses if x is not None]
            rec["fluency_loss_mean"] = sum(vals) / len(vals) if vals else None
            rec["fluency_loss_median"] = _median(vals)
        if other is not None:
            rec["agreement"] = agreement(labels, other, arm.lang)
            all_a += labels
            all_b += other
            all_lang += [arm.lang] * len(labels)
        out_arms[arm.label] = rec
        gens[arm.label] = [{"prompt": p, "source": s["source"], "text": c, "lang": L,
                            **({"lang2": o} if other is not None else {}),
                            **({"loss": lo} if fluency else {})}
                           for p, s, c, L, o, lo in zip(texts, prompts, cont, labels,
                                                        other or [None] * len(cont),
                                                        losses or [None] * len(cont))]
    result = {"arms": out_arms, "generations": gens, "gaps": transfer_gaps(out_arms),
              "config": {"intervention": intervention, "max_new_tokens": max_new_tokens,
                         "temperature": temperature, "detector": detector}}
    if all_a:
        result["agreement"] = {"detectors": [detector, agreement_detector], **agreement(all_a, all_b)}
    return result


def transfer_gaps(arms: dict[str, dict]) -> dict:
    """Clipped relative transfer gap per transferred arm (against that model's native and none arms)."""
    gaps = {}
    for label, rec in arms.items():
        if rec["kind"] != "transferred":
            continue
        side, lang = label.split("/")[0], rec["lang"]
        nat = arms.get(f"{side}/{lang}/native", {}).get("share", {}).get(lang, {}).get("share")
        none = arms.get(f"{side}/none", {}).get("share", {}).get(lang, {}).get("share") or 0.0
        tr = rec["share"][lang]["share"]
        gaps[label] = relative_transfer_gap(nat, tr, none)
    return gaps
