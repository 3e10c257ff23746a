"""The arms of the steering-fit experiment, their evaluation (resumable, one file per arm) and each
stitch's FVU on held-out tokens per language.

Arms shared by every stitch: ``none`` and ``native`` on each model. Per stitch, language and
direction (``up``: A's vector on B through ``P_up``; ``down``: B's on A through ``P_down``):

- ``tr``       the transfer recipe: ``normalise(v @ P)``, z from the receiving model's own
               target-language tokens;
- ``tr-xm``    the same with the massive dimensions (of this stitch's statistics) zeroed before and
               after mapping (the massive-dims swap);
- ``tr-zmap``  ``tr``'s vector clamped at a z carried through the stitch: the source model's
               target-language (and English) mean mapped by the affine map, projected on the vector
               (the z swap: what a user without target-language text for the receiving model gets).

The coverage swap needs no arm of its own: it is ``tr`` through a stitch fitted with the target
language against ``tr`` through one fitted without it (same size).
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable

import torch

from ._core import ReconAccumulator, RunFolder, write_json_atomic
from .arms import Side, SteerArm
from .evaluate import evaluate_arms
from .stats import share
from .vector import LanguageStats, transfer_vector

MAPS = {"up": ("A", "B"), "down": ("B", "A")}


def _z(stats: LanguageStats, v: torch.Tensor, lang: str, mode: str, scale: float) -> tuple[float, float]:
    return stats.z(v, lang, mode, scale), stats.z(v, "en", "literal", 1.0)


def shared_arms(stats: dict[str, LanguageStats], languages: list[str], mode: str, scale: float) -> list[tuple[str, SteerArm]]:
    """``none`` and ``native`` on each model (they do not depend on the stitch)."""
    out = []
    for k in ("A", "B"):
        out.append((f"{k}/none", SteerArm(side=k, kind="none")))
        for L in languages:
            v = stats[k].native(L)
            z, z_en = _z(stats[k], v, L, mode, scale)
            out.append((f"{k}/{L}/native", SteerArm(side=k, kind="native", lang=L, v=v, z=z, z_en=z_en,
                                                   info=stats[k].projections(v, L) | {"z": z})))
    return out


def stitch_arms(fit: str, stitch, stats: dict[str, LanguageStats], massive: dict[str, list[int]],
                languages: list[str], mode: str, scale: float, diagnose: bool) -> list[tuple[str, SteerArm]]:
    """The transferred arms of one stitch (labels ``FIT/SIDE/LANG/VARIANT-DIRECTION``)."""
    out = []
    for L in languages:
        for d, (src, dst) in MAPS.items():
            P = (stitch.P_up if d == "up" else stitch.P_down).detach()
            fmap = stitch.up if d == "up" else stitch.down
            variants = [("tr", False)] + ([("tr-xm", True), ("tr-zmap", False)] if diagnose else [])
            for name, xm in variants:
                ex_s, ex_t = (massive[src], massive[dst]) if xm else ([], [])
                v = transfer_vector(stats[src].native(L, ex_s), P, ex_s, ex_t)
                if name == "tr-zmap":
                    with torch.no_grad():
                        m_L = fmap(stats[src].means[L].double()).double()
                        m_en = fmap(stats[src].means["en"].double()).double()
                    zt, ze = float(m_L @ v.double()), float(m_en @ v.double())
                    z = scale * zt if mode == "literal" else ze + scale * (zt - ze)
                    z_en = stats[dst].z(v, "en")
                    info = {"z": z, "z_target_mapped": zt, "z_en_mapped": ze, "z_own": stats[dst].z(v, L, mode, scale)}
                else:
                    z, z_en = _z(stats[dst], v, L, mode, scale)
                    info = stats[dst].projections(v, L) | {"z": z}
                info["cos_with_native"] = float(v.double() @ stats[dst].native(L, ex_t).double())
                arm = SteerArm(side=dst, kind="transferred", lang=L, direction=d, v=v, z=z, z_en=z_en, info=info)
                out.append((f"{fit}/{dst}/{L}/{name}-{d}", arm))
    return out


def arm_key(arm: SteerArm, side: Side, prompts: list[dict], settings: dict) -> str:
    """What an arm's result depends on: model, layer, vector, z, prompts and generation settings."""
    h = hashlib.sha256(json.dumps([side.adapter.name, side.layer, arm.side, arm.kind, arm.lang, arm.z, arm.z_en,
                                   [p["text"] for p in prompts], settings], sort_keys=True).encode())
    if arm.v is not None:
        h.update(arm.v.float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _indicators(gens: list[dict], lang: str | None, field: str) -> list[int]:
    return [int(g.get(field) == lang) for g in gens]


def evaluate_one(rf: RunFolder, label: str, arm: SteerArm, sides: dict[str, Side], prompts: list[dict],
                 languages: list[str], settings: dict, log: Callable[[str], None]) -> dict:
    """One arm's record, reused from ``RUN/steering_fit/arms/`` when its vector, z, prompts and
    settings are unchanged; written atomically as soon as it is evaluated (a killed run resumes)."""
    path = rf.path("steering_fit", "arms", label.replace("/", "__") + ".json")
    key = arm_key(arm, sides[arm.side], prompts, settings)
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if old.get("key") == key:
                log(f"  {label}: reused")
                return old
        except json.JSONDecodeError:
            pass
    res = evaluate_arms(sides, [arm], prompts, languages, intervention=settings["intervention"],
                        max_new_tokens=settings["max_new_tokens"], temperature=0.0, seed=settings["seed"],
                        detector=settings["detector"], agreement_detector=settings["agreement_detector"],
                        fluency=settings["fluency"], log=log)
    rec = res["arms"][arm.label]
    gens = res["generations"][arm.label]
    langs = [arm.lang] if arm.lang else list(languages)
    second = settings["agreement_detector"] not in ("none", settings["detector"])
    out = {"key": key, "label": label, "side": arm.side, "kind": arm.kind, "lang": arm.lang,
           "direction": arm.direction, "n": rec["n"], "info": rec["info"],
           "share": rec["share"], "share_en": rec["share_en"], "labels": rec["labels"],
           "hits": {L: _indicators(gens, L, "lang") for L in langs},
           "fluency_loss_mean": rec.get("fluency_loss_mean"), "fluency_loss_median": rec.get("fluency_loss_median"),
           "generations": gens}
    if second:
        out["hits2"] = {L: _indicators(gens, L, "lang2") for L in langs}
        out["share2"] = {L: share(sum(out["hits2"][L]), len(gens)) for L in langs}
        out["agreement"] = rec.get("agreement")
    write_json_atomic(path, out)
    return out


@torch.no_grad()
def heldout_pairs(adapters: dict[str, object], layers: dict[str, int], texts: list[str], context_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned residuals ``(hA [N, dA], hB [N, dB])`` of ``texts`` at the stitch layers (special tokens out)."""
    from ._core import windows_for_texts

    xa, xb = [], []
    for ea, eb, ia, ib in windows_for_texts(texts, adapters["A"], adapters["B"], context_size):
        ia, ib = torch.as_tensor(ia), torch.as_tensor(ib)
        keep = ~(ea.special[ia] | eb.special[ib])
        ia, ib = ia[keep], ib[keep]
        if len(ia) == 0:
            continue
        ha = adapters["A"].capture(ea.ids[None], [layers["A"]])[layers["A"]][0].double().cpu()
        hb = adapters["B"].capture(eb.ids[None], [layers["B"]])[layers["B"]][0].double().cpu()
        xa.append(ha[ia])
        xb.append(hb[ib])
    if not xa:
        return torch.zeros(0, 1, dtype=torch.float64), torch.zeros(0, 1, dtype=torch.float64)
    return torch.cat(xa), torch.cat(xb)


@torch.no_grad()
def stitch_fvu(stitch, hA: torch.Tensor, hB: torch.Tensor, massive: dict[str, list[int]]) -> dict:
    """FVU of ``up`` (predicting B from A) and ``down`` on one language's held-out tokens, over all
    dimensions and excluding this stitch's massive dimensions."""
    up = ReconAccumulator(stitch.d_target, massive["B"])
    down = ReconAccumulator(stitch.d_source, massive["A"])
    up.update(hB, stitch.up(hA.double()))
    down.update(hA, stitch.down(hB.double()))
    keys = ("n_tokens", "fvu", "fvu_excl_massive", "cos")
    return {"up": {k: up.result()[k] for k in keys}, "down": {k: down.result()[k] for k in keys}}
