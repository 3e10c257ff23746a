"""What the steering-fit experiment tells a user: per stitch, direction and language, the transferred
share against no steering and the native vector (exact intervals), the relative transfer gap with a
paired-bootstrap interval, the stitch's held-out FVU on the target language, and, by swapping one
ingredient at a time, which of coverage, massive dimensions or the clamp's z moves the share.

A transfer *fails* when its target-language share is not above the unsteered share beyond its
interval (Clopper-Pearson lower bound <= the ``none`` share) or its gap exceeds 0.5. A swap *accounts
for* a failure when the share with the ingredient swapped in minus the share without has a paired
bootstrap 95% interval above 0.
"""

from __future__ import annotations

import numpy as np

from .fitexp_config import SteeringFitConfig, folder_name
from .stats import relative_transfer_gap

SWAPS = ("coverage", "massive", "z")


def _mean(h: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return h[idx].mean(axis=1)


def boot_diff(a: list[int], b: list[int], n: int, seed: int) -> dict:
    """``mean(a) - mean(b)`` over the same prompts, with a paired-bootstrap 95% interval."""
    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    idx = np.random.default_rng(seed).integers(0, len(a_), size=(n, len(a_)))
    d = _mean(a_, idx) - _mean(b_, idx)
    return {"diff": float(a_.mean() - b_.mean()), "ci_low": float(np.quantile(d, 0.025)),
            "ci_high": float(np.quantile(d, 0.975))}


def boot_gap(native: list[int], tr: list[int], none: list[int], n: int, seed: int) -> dict:
    """The clipped relative gap and its paired-bootstrap 95% interval (resamples where the native
    vector does not beat no steering are left out and counted)."""
    nat, t, no = (np.asarray(x, float) for x in (native, tr, none))
    point = relative_transfer_gap(nat.mean(), t.mean(), no.mean())
    idx = np.random.default_rng(seed).integers(0, len(nat), size=(n, len(nat)))
    mn, mt, mo = _mean(nat, idx), _mean(t, idx), _mean(no, idx)
    ok = mn > mo
    g = np.clip((mn[ok] - mt[ok]) / (mn[ok] - mo[ok]), 0.0, 1.0)
    out = {"gap": point, "undefined_resamples": int((~ok).sum())}
    if len(g):
        out |= {"ci_low": float(np.quantile(g, 0.025)), "ci_high": float(np.quantile(g, 0.975))}
    return out


def fitted_on(coverage: dict, fit: dict, lang: str) -> bool:
    """Whether the stitch's *training* documents hold any of ``wiki-<lang>`` (a mix component can
    have none at a small size, however it is weighted)."""
    return coverage.get(fit["folder"], {}).get(f"wiki-{lang}", {}).get("train", 0) > 0


def _find_fit(fits: list[dict], coverage: dict, tokens: int, lang: str, covered: bool) -> dict | None:
    for f in fits:
        if f["tokens"] == tokens and fitted_on(coverage, f, lang) == covered:
            return f
    return None


def summarise(cfg: SteeringFitConfig, fits: list[dict], arms: dict[str, dict], coverage: dict, overlaps: dict,
              vector_tokens: dict) -> dict:
    cells = []
    seed = cfg.seed
    for f in fits:
        fit = folder_name(f["corpus"], f["tokens"])
        for L in cfg.languages:
            covered = fitted_on(coverage, f, L)
            for d, dst in (("up", "B"), ("down", "A")):
                tr = arms[f"{fit}/{dst}/{L}/tr-{d}"]
                nat, none = arms[f"{dst}/{L}/native"], arms[f"{dst}/none"]
                cell = {"fit": fit, "corpus": f["corpus"], "tokens": f["tokens"], "direction": d, "lang": L,
                        "model": dst, "covered": covered, "n": tr["n"],
                        "none": none["share"][L], "native": nat["share"][L], "transferred": tr["share"][L],
                        "transferred_2": (tr.get("share2") or {}).get(L), "none_2": (none.get("share2") or {}).get(L),
                        "native_2": (nat.get("share2") or {}).get(L),
                        "gap": boot_gap(nat["hits"][L], tr["hits"][L], none["hits"][L], cfg.bootstrap, seed),
                        "fvu": (f.get("fvu", {}).get(L) or {}).get(d),
                        "fluency": {"transferred": tr.get("fluency_loss_mean"), "native": nat.get("fluency_loss_mean"),
                                    "none": none.get("fluency_loss_mean")},
                        "cos_with_native": tr["info"].get("cos_with_native")}
                t = cell["transferred"]
                cell["above_none"] = t["ci_low"] is not None and t["ci_low"] > cell["none"]["share"]
                cell["native_steers"] = nat["share"][L]["ci_low"] > cell["none"]["share"]
                g = cell["gap"]["gap"]
                cell["failed"] = (not cell["above_none"]) or (g is not None and g > 0.5)
                swaps = {}
                other = _find_fit(fits, coverage, f["tokens"], L, not covered)
                if other is not None:
                    o = arms[f"{folder_name(other['corpus'], other['tokens'])}/{dst}/{L}/tr-{d}"]
                    swaps["coverage"] = {"with": other["corpus"], **boot_diff(o["hits"][L], tr["hits"][L],
                                                                               cfg.bootstrap, seed + 1)}
                for name, variant in (("massive", "tr-xm"), ("z", "tr-zmap")):
                    rec = arms.get(f"{fit}/{dst}/{L}/{variant}-{d}")
                    if rec is not None:
                        swaps[name] = {"share": rec["share"][L], **boot_diff(rec["hits"][L], tr["hits"][L],
                                                                             cfg.bootstrap, seed + 2)}
                cell["swaps"] = swaps
                cell["accounts"] = sorted((k for k, s in swaps.items() if s["ci_low"] > 0),
                                          key=lambda k: -swaps[k]["diff"])
                cells.append(cell)
    return {"config": cfg.model_dump(mode="json"), "cells": cells, "coverage": coverage, "overlaps": overlaps,
            "vector_tokens": vector_tokens,
            "fits": [{k: f.get(k) for k in ("corpus", "tokens", "folder", "n_tokens", "massive_dims", "fvu", "recon_fvu")}
                     | {"layers": [f["meta"]["source_layer"], f["meta"]["target_layer"]]} for f in fits],
            "shared_arms": {k: {"share": v["share"], "share2": v.get("share2"), "fluency_loss_mean": v.get("fluency_loss_mean")}
                            for k, v in arms.items() if "/" in k and k.split("/")[0] in ("A", "B")}}


def _s(x: dict | None) -> str:
    if not x or x.get("share") is None:
        return "-"
    return f"{x['k']}/{x['n']} [{x['ci_low']:.2f}, {x['ci_high']:.2f}]"


def _g(g: dict) -> str:
    if g.get("gap") is None:
        return "undefined (native <= none)"
    ci = f" [{g['ci_low']:.2f}, {g['ci_high']:.2f}]" if "ci_low" in g else ""
    return f"{g['gap']:.2f}{ci}"


def _d(s: dict | None) -> str:
    return "-" if s is None else f"{s['diff']:+.2f} [{s['ci_low']:+.2f}, {s['ci_high']:+.2f}]"


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown(res: dict) -> str:
    cfg = res["config"]
    det2 = cfg["agreement_detector"]
    fit0 = res["fits"][0]
    lines = [
        "## Steering transfer by fitting text (`stitchplug experiment steering-fit`)", "",
        f"Layers A {fit0['layers'][0]} / B {fit0['layers'][1]} for every stitch; {cfg['n_prompts']} English prompts "
        f"(openings of wiki-en articles no stitch was fitted on, seeded draw), {cfg['max_new_tokens']} new tokens, "
        f"{cfg['intervention']} at z {cfg['z_mode']} x{cfg['z_scale']}; {cfg['detector']}"
        + (f" (and {det2})" if det2 != "none" else "") + "; exact 95% intervals; gap = (native - transferred) / "
        "(native - none), paired bootstrap 95% interval over prompts. FVU: the map in that direction on held-out "
        "tokens of the target language (excluding massive dims in brackets).", "",
        f"| fitting text | tokens | dir | lang | none | native | transferred | {det2 if det2 != 'none' else '2nd'}: transferred "
        "| gap | FVU target lang | fluency tr / native / none | transfer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in res["cells"]:
        fvu = c["fvu"]
        fl = c["fluency"]
        verdict = ("fails" if c["failed"] else "transfers") + ("" if c["native_steers"] else " (native does not steer)")
        cov = "" if c["covered"] else " (no target-language text fitted)"
        lines.append(f"| {c['corpus']}{cov} | {c['tokens']:,} | {c['direction']} | {c['lang']} | {_s(c['none'])} | "
                     f"{_s(c['native'])} | {_s(c['transferred'])} | {_s(c['transferred_2'])} | {_g(c['gap'])} | "
                     + ("-" if not fvu else f"{fvu['fvu']:.3f} ({fvu['fvu_excl_massive']:.3f})")
                     + f" | {_f(fl['transferred'])} / {_f(fl['native'])} / {_f(fl['none'])} | {verdict} |")
    if any(c["swaps"] for c in res["cells"]):
        lines += ["", "**Where transfer fails, what accounts for it** (share with the ingredient swapped in minus the "
                  "transfer recipe's, same prompts, paired bootstrap 95% interval): *coverage* = through the stitch "
                  "of the same size fitted with (or, for a stitch that has it, without) the target language; "
                  "*massive* = massive dimensions zeroed; *z* = z carried through the stitch instead of the "
                  "receiving model's own target-language tokens.", "",
                  "| fitting text | tokens | dir | lang | coverage | massive | z | accounts for it |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in res["cells"]:
            if not c["failed"]:
                continue
            sw = c["swaps"]
            acc = ", ".join(c["accounts"]) or "none of the three swaps"
            lines.append(f"| {c['corpus']} | {c['tokens']:,} | {c['direction']} | {c['lang']} | {_d(sw.get('coverage'))} | "
                         f"{_d(sw.get('massive'))} | {_d(sw.get('z'))} | {acc} |")
    langs = ["en", *cfg["languages"]]
    lines += ["", "**Held-out FVU per language** (up = A -> B, down = B -> A; excluding massive dims in brackets)", "",
              "| fitting text | tokens | cached | " + " | ".join(f"{L} up | {L} down" for L in langs) + " |",
              "|---|---|---|" + "---|---|" * len(langs)]
    for f in res["fits"]:
        row = []
        for L in langs:
            v = (f.get("fvu") or {}).get(L)
            row += ["-", "-"] if not v else [f"{v[d]['fvu']:.3f} ({v[d]['fvu_excl_massive']:.3f})" for d in ("up", "down")]
        lines.append(f"| {f['corpus']} | {f['tokens']:,} | {f.get('n_tokens') or 0:,} | " + " | ".join(row) + " |")
    lines += ["", "**Held-out documents.** Each cache's document split per component (train / eval documents): "
              + "; ".join(f"`{k.split('/')[-1]}` " + ", ".join(f"{c} {n['train']}/{n['eval']}" for c, n in v.items())
                          for k, v in res["coverage"].items())
              + ". Vectors, prompts and FVU texts are drawn outside every stitch's training documents; measured "
              "overlaps: " + ", ".join(f"{k} {v}" for k, v in res["overlaps"].items()) + "."]
    return "\n".join(lines)
