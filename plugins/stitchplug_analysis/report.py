"""Markdown and plots of the feature analysis (``report.md`` section ``feature_analysis``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

SECTION = "feature_analysis"
PLOT_TRANSFER, PLOT_NULL = "analysis_transferability.png", "analysis_null_share.png"


def _f(v: Any, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(values) -> np.ndarray:
    a = np.array([np.nan if v is None else v for v in values], dtype=float)
    return a[np.isfinite(a)]


def _hist(series: dict[str, list], path: Path, xlabel: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    bins = np.linspace(-1, 1, 41)
    for label, vals in series.items():
        v = _finite(vals)
        if v.size:
            ax.hist(v, bins=bins, alpha=0.55, label=f"{label} (n={v.size})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("latents")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _summary_row(name: str, s: dict) -> str:
    if not s or not s.get("n"):
        return f"| {name} | 0 | n/a | n/a | n/a | n/a | n/a |"
    return (f"| {name} | {s['n']} | {_f(s['mean'])} | {_f(s['median'])} | {_f(s['q10'])} .. {_f(s['q90'])} | "
            f"{_f(s['share_above_0.5'], '.1%')} | {_f(s['share_below_0'], '.1%')} |")


def transferability_md(t: dict, folder: Any) -> list[str]:
    if "per_latent" not in t:
        return ["### Transferability (Eq. 10)", "", f"Not computed: {t.get('error', 'no data')}.", ""]
    rnd_silent = f", {t['n_silent_random']} for the random SAE" if "n_silent_random" in t else ""
    _hist({"transferred SAE": t["per_latent"], "random SAE": t.get("per_latent_random", [])},
          folder.plot(PLOT_TRANSFER), "transferability (Pearson r)")
    return ["### Transferability per latent (Eq. 10)", "",
            f"{t['n_usable']:,} usable held-out tokens ({t['usable_share']:.1%} of A's scoreable positions: aligned, "
            f"with next tokens covering the same text). {t['n_live']} live latents of {t['n_latents']}; "
            f"{t['n_dead']} dead on these tokens (excluded); {t['n_silent_target']} live latents never fire after "
            f"transfer (scored 0){rnd_silent}.",
            "", "| SAE on B | latents | mean r | median r | 10%..90% | r > 0.5 | r < 0 |", "|---|---|---|---|---|---|---|",
            _summary_row("transferred", t["transferred"]), _summary_row("random, same shape", t.get("random", {})),
            "", f"![]({PLOT_TRANSFER})", ""]


def semantic_md(s: dict, folder: Any) -> list[str]:
    cls = np.asarray(s.get("classes", []))
    c = s.get("counts", {})
    lines = ["### Semantic vs structural latents", "",
             f"{s['n_sentences']} held-out sentences, each in {s.get('n_versions', 0)} versions (augmenter "
             f"`{s.get('augmenter')}`: function words and punctuation kept, content words swapped for words of the "
             f"same rough class from other-topic articles). Structural: fired on all versions in at least half "
             f"the sentences where it fired; semantic: otherwise; rare: fired in < 2 sentences.", "",
             f"Structural {c.get('structural', 0)}, semantic {c.get('semantic', 0)}, rare {c.get('rare', 0)}.", ""]
    pc = s.get("per_class", {})
    if pc:
        lines += ["| class | latents | mean r | median r | 10%..90% | r > 0.5 | r < 0 |", "|---|---|---|---|---|---|---|"]
        lines += [_summary_row(k, pc.get(k, {})) for k in ("structural", "semantic")]
        lines += ["", f"Std of r: structural {_f(pc.get('structural', {}).get('std'))}, semantic "
                  f"{_f(pc.get('semantic', {}).get('std'))}; share in the tails (r > 0.5 or r < 0.1): structural "
                  f"{_f(pc.get('structural', {}).get('share_tails'), '.1%')}, semantic "
                  f"{_f(pc.get('semantic', {}).get('share_tails'), '.1%')}.", ""]
    ex = s.get("examples") or []
    if ex:
        lines += ["Example rewrites:", ""] + [f"- {v}" for v in ex[0]] + [""]
    return lines


def _plot_null(e: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(e["null_share_source"], e["null_share_transferred"], s=3, alpha=0.4)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    ax.set_xlabel("null-space share on A (source)")
    ax.set_ylabel("null-space share on B (transferred)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def entropy_md(e: dict, folder: Any) -> list[str]:
    _plot_null(e, folder.plot(PLOT_NULL))
    lines = ["### Entropy features", "",
             f"Null space: bottom {e['fraction']:.0%} singular directions of the folded unembedding "
             f"({e['null_dims'][0]} dims on A, {e['null_dims'][1]} on B). Share of each decoder row's squared norm "
             f"in it: mean {e['mean_null_share'][0]:.3f} on A, {e['mean_null_share'][1]:.3f} after transfer; "
             f"correlation across latents {e['corr_null_share']:.3f}. Delta H: mean output entropy (nats) with "
             f"the latent's contribution removed minus clean, over the positions where it fires.", "",
             "| latent | top on | null share A -> B | freq A / B | mean act A / B | Delta H on A | Delta H on B |",
             "|---|---|---|---|---|---|---|"]
    for r in e["features"]:
        a, b = r["source"], r["transferred"]
        lines.append(f"| {r['latent']} | {r['top_on']} | {a['null_share']:.3f} -> {b['null_share']:.3f} | "
                     f"{a['frequency']:.4f} / {b['frequency']:.4f} | {a['mean_when_active']:.2f} / {b['mean_when_active']:.2f} | "
                     f"{_f(a.get('delta_entropy'), '+.3f')} | {_f(b.get('delta_entropy'), '+.3f')} |")
    return lines + ["", f"![]({PLOT_NULL})", ""]


def attention_md(a: dict, folder: Any) -> list[str]:
    lines = ["### Attention-deactivation features", "",
             f"{len(a['candidates'])} most frequent live latents of A; the latent's direction is path-patched out of the "
             f"query (q) or key (k) input of each later head; score = largest drop in attention to the first token. "
             f"A latent keeps its role after transfer when its score on B exceeds the best of the random SAE's "
             f"{len(a['candidates'])} most frequent latents on B ({a['random_max_score']:.4f}). "
             f"Kept: {a['n_keep_role']} of {len(a['top'])}.", "",
             "| latent | A: score (path, layer.head) | B: score (path, layer.head) | rank on B | keeps role |",
             "|---|---|---|---|---|"]
    for t in a["top"]:
        s, b = t["source"], t["transferred"] or {}
        lines.append(f"| {t['latent']} | {s['score']:.4f} ({s['path']}, {s['layer']}.{s['head']}) | "
                     f"{_f(b.get('score'), '.4f')} ({b.get('path')}, {b.get('layer')}.{b.get('head')}) | "
                     f"{t['rank_on_B']} | {'yes' if t['keeps_role'] else 'no'} |")
    return lines + [""]


def markdown(out: dict, folder: Any) -> str:
    """The section's Markdown; ``folder`` is the run's RunFolder (plots are written through it)."""
    lines = ["## Feature analysis (paper §5)", "",
             f"`stitchplug analyze`, budget `{out['budget']}`: {out['n_windows']} held-out windows, "
             f"layers A.{out['layers'][0]} / B.{out['layers'][1]}. Seconds per part: "
             + ", ".join(f"{k} {v:.0f}" for k, v in out.get("seconds", {}).items()) + ".", ""]
    if "transferability" in out:
        lines += transferability_md(out["transferability"], folder)
    if "semantic" in out:
        lines += semantic_md(out["semantic"], folder)
    if "entropy" in out:
        lines += entropy_md(out["entropy"], folder)
    if "attention" in out:
        lines += attention_md(out["attention"], folder)
    return "\n".join(lines)


def write_sections(rf: Any, out: dict, log: Callable[[str], None] = print) -> None:
    """Merge ``out`` into ``metrics.json[feature_analysis]`` (parts not re-run are kept) and render
    the whole section into the report, both through the run's RunFolder."""
    old = rf.metrics().get(SECTION) or {}
    merged = {**old, **out, "seconds": {**old.get("seconds", {}), **out.get("seconds", {})}}
    rf.add_metrics(SECTION, merged)
    path = rf.add_report_section(SECTION, markdown(merged, rf))
    log(f"report: {path}")
