"""The steering section of ``report.md``: shares with intervals per arm, gaps, fluency, examples."""

from __future__ import annotations

from pathlib import Path


def _pct(rec: dict | None) -> str:
    if not rec or rec.get("share") is None:
        return "n/a"
    return f"{rec['k']}/{rec['n']} = {rec['share']:.2f} [{rec['ci_low']:.2f}, {rec['ci_high']:.2f}]"


def _f(x, fmt=".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def shares_table(res: dict) -> list[str]:
    cfg = res.get("config", {})
    lines = ["| arm | model | share in target language [95% CI] | share English | z | fluency loss (mean / median) |",
             "|---|---|---|---|---|---|"]
    for label, rec in res["arms"].items():
        if rec["kind"] == "none":
            tgt = "; ".join(f"{L}: {_pct(r)}" for L, r in rec["share"].items())
        else:
            tgt = _pct(rec["share"][rec["lang"]])
        z = rec.get("info", {}).get("z")
        lines.append(f"| {label} | {rec['model']}.{rec['layer']} | {tgt} | {_pct(rec['share_en'])} | {_f(z)} | "
                     f"{_f(rec.get('fluency_loss_mean'))} / {_f(rec.get('fluency_loss_median'))} |")
    lines += ["", f"Intervention `{cfg.get('intervention')}`, z mode `{cfg.get('z_mode')}` x {cfg.get('z_scale')}, "
              f"massive dims excluded: {cfg.get('exclude_massive')}; {cfg.get('max_new_tokens')} new tokens, "
              f"temperature {cfg.get('temperature')}, detector `{cfg.get('detector')}`. Fluency = the unsteered "
              "model's loss on the continuation (nats/token; gibberish scores high)."]
    return lines


def report_section(res: dict, folder: str | Path | None = None, examples: int | None = None) -> str:
    from .steering_run import read_generations

    cfg = res.get("config", {})
    n_ex = cfg.get("examples", 3) if examples is None else examples
    lines = ["## Steering-vector transfer (paper section 4)", "",
             f"Prompts: {res.get('n_prompts')}; vector tokens per model: {res.get('vector_tokens')}.", ""]
    lines += shares_table(res) + [""]
    if res.get("gaps"):
        lines += ["Clipped relative transfer gap `(native - transferred) / (native - none)` in [0, 1] "
                  "(0: transfer as good as native; n/a: native does not beat no steering):", ""]
        lines += [f"- {k}: {_f(v)}" for k, v in res["gaps"].items()] + [""]
    vec = [(k, r["info"]) for k, r in res["arms"].items() if r["kind"] in ("native", "transferred")]
    if vec:
        lines += ["| vector | z_target | z_en | English sd along v | offset in English sd | cos with native |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {_f(i.get('z_target'))} | {_f(i.get('z_en'))} | {_f(i.get('en_sd'))} | "
                  f"{_f(i.get('offset_in_en_sd'))} | {_f(i.get('cos_with_native'), '.3f')} |" for k, i in vec]
        lines.append("")
    if res.get("agreement"):
        a = res["agreement"]
        lines += [f"Detector agreement ({' vs '.join(a['detectors'])}) on all {a['n']} generations: "
                  f"same label {a['same_label']:.1%}.", ""]
    if folder is not None and n_ex:
        gens = read_generations(folder)
        if gens:
            lines += ["### Example generations", ""]
            for label, rows in gens.items():
                lines.append(f"**{label}**")
                lines.append("")
                for r in rows[:n_ex]:
                    text = " ".join(r["text"].split())
                    lines.append(f"- *{r['prompt']}* -> {text} `[{r['lang']}]`")
                lines.append("")
    return "\n".join(lines)


_ORDER = {"none": 0, "native": 1, "transferred": 2, "random": 3}


def merge_pipeline_results(results: dict) -> dict:
    """The kind's ``metrics.json`` section (``{pipeline arm: {evaluator: result}}``) as one result
    in :func:`report_section`'s shape: arms by steering label, gaps, pooled detector agreement."""
    from .evaluate import transfer_gaps

    arms, n, same, dets, cfg, vtok, nprompts = {}, 0, 0.0, None, {}, {}, None
    for label, by_eval in results.items():
        res = by_eval.get("steering_language") if isinstance(by_eval, dict) else None
        if not res:
            continue
        for k, rec in res.get("arms", {}).items():
            arms[k] = rec | {"pipeline_arm": label}
        agr = res.get("agreement")
        if agr and agr.get("n"):
            n += agr["n"]
            same += agr["same_label"] * agr["n"]
            dets = agr["detectors"]
        cfg = res.get("config", cfg)
        vtok |= res.get("vector_tokens", {})
        nprompts = res.get("n_prompts", nprompts)
    arms = dict(sorted(arms.items(), key=lambda kv: (kv[0].split("/")[0], kv[1].get("lang") or "",
                                                     _ORDER.get(kv[1]["kind"], 9), kv[0])))
    gaps = (results.get("aggregate") or {}).get("gaps")  # the evaluate stage's step across arms
    if gaps is None:  # a run folder evaluated before the kind declared aggregate
        gaps = transfer_gaps(arms)
    out = {"arms": arms, "gaps": gaps, "config": cfg, "n_prompts": nprompts,
           "vector_tokens": dict(sorted(vtok.items()))}
    if n:
        out["agreement"] = {"detectors": dets, "n": n, "same_label": same / n}
    return out


def pipeline_section(results: dict, folder) -> str:
    merged = merge_pipeline_results(results)
    if not merged["arms"]:
        return "## Steering-vector transfer\n\nNo steering results."
    gen_dir = folder.artifact("steering", "generations").parent if folder is not None else None
    return report_section(merged, gen_dir)


def summary_lines(results: dict) -> list[str]:
    merged = merge_pipeline_results(results)
    lines = []
    for label, rec in merged["arms"].items():
        L = rec.get("lang")
        shares = [rec["share"][L]] if L else list(rec["share"].values())
        shown = ", ".join(_pct(s) for s in shares)
        lines.append(f"{label}: target-language share {shown}")
    return lines
