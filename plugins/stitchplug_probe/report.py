"""``report.md`` section and the Fig. 3a-like plot for the probe-transfer results."""

from __future__ import annotations

from pathlib import Path

from .arms import DENSE_ARMS, SPARSE_ARMS

LABELS = {"source_A": "source SAE on A", "transfer_noretrain": "transferred, no retrain",
          "transfer_retrain": "transferred, retrain (A's latents)", "transfer_reselect": "transferred, re-selected",
          "native_B": "native SAE on B", "random_B": "random SAE on B",
          "random_unit_B": "random unit directions on B", "shuffled_B": "native SAE, latents shuffled", "dense_A": "dense A", "dense_B": "dense B",
          "dense_Tdown_noretrain": "dense A probe on T_down(h_B)", "dense_Tdown_retrain": "dense refit on T_down(h_B)"}
TABLE_KS = ("1", "5", "20")


def plot(agg: dict, path: str | Path) -> Path:
    """Accuracy vs k per sparse arm (mean over tasks, 95% bootstrap band); dense arms as lines; from
    the kind's ``aggregate``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for arm in SPARSE_ARMS:
        by_k = agg["sparse"].get(arm)
        if not by_k:
            continue
        ks = sorted(by_k, key=int)
        x = [int(k) for k in ks]
        m = [by_k[k]["mean"] for k in ks]
        ax.plot(x, m, marker="o", label=LABELS[arm])
        ax.fill_between(x, [by_k[k]["ci"][0] for k in ks], [by_k[k]["ci"][1] for k in ks], alpha=0.15)
    for i, arm in enumerate(a for a in DENSE_ARMS if a in agg["dense"]):
        ax.axhline(agg["dense"][arm]["mean"], ls=("--", ":", "-.", (0, (5, 1)))[i % 4], lw=1, color="0.3",
                   label=LABELS[arm])
    ax.set_xscale("log")
    ax.set_xlabel("k (latents in the probe)")
    ax.set_ylabel(f"test accuracy (mean over {len(agg['tasks'])} tasks)")
    ax.set_ylim(0.4, 1.0)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: inside it hid the k=20 points
    ax.set_title("Probe transfer A -> B (cf. paper Fig. 3a)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ci(r: dict) -> str:
    return f"{r['mean' if 'mean' in r else 'accuracy']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"


def markdown(agg: dict, plot_name: str | None = "probe_transfer.png") -> str:
    """The section from the kind's ``aggregate`` (:func:`~stitchplug_probe.combine.combine`)."""
    lines = ["## Probe transfer (method.md section 4)", ""]
    if plot_name:
        lines += [f"![accuracy vs k]({plot_name})", ""]
    lines += ["Mean test accuracy over tasks, 95% bootstrap interval (resampling each task's test examples):", "",
              "| arm | " + " | ".join(f"k={k}" for k in TABLE_KS) + " |", "|---|" + "---|" * len(TABLE_KS)]
    for arm in SPARSE_ARMS:
        by_k = agg["sparse"].get(arm, {})
        if by_k:
            lines.append(f"| {LABELS[arm]} | " + " | ".join(_ci(by_k[k]) if k in by_k else "-" for k in TABLE_KS) + " |")
    for arm in DENSE_ARMS:
        if arm in agg["dense"]:
            lines.append(f"| {LABELS[arm]} (dense) | {_ci(agg['dense'][arm])} | | |")
    if agg.get("gap_vs_native"):
        lines += ["", "Transfer gap to the native SAE on B (accuracy difference, paired bootstrap):", "",
                  "| arm | " + " | ".join(f"k={k}" for k in TABLE_KS) + " |", "|---|" + "---|" * len(TABLE_KS)]
        for arm, by_k in agg["gap_vs_native"].items():
            lines.append(f"| {LABELS[arm]} | " + " | ".join(
                f"{by_k[k]['mean']:+.3f} [{by_k[k]['ci'][0]:+.3f}, {by_k[k]['ci'][1]:+.3f}]" if k in by_k else "-"
                for k in TABLE_KS) + " |")
    above = agg.get("tasks_above_random", {})
    if above:
        lines += ["", "No-retrain transfer above the random SAE (point estimates): " + ", ".join(
            f"k={k}: {v['above']}/{v['of']} tasks" for k, v in above.items())]
    rec = agg.get("recovery") or {}
    if rec:
        lines += ["", "Share of the dense probe's accuracy over chance recovered at k=5 (dense A for the source arm, "
                  "dense B otherwise; over tasks where the dense probe beats chance by 0.02):", "",
                  "| arm | mean | median | tasks |", "|---|---|---|---|"]
        lines += [f"| {LABELS.get(a, a)} | {r['mean']:.2f} | {r['median']:.2f} | {r['n_tasks']} |" for a, r in rec.items()]
    fails = agg.get("failures")
    if fails is not None:
        lines += ["", f"Tasks where the retrained transfer fails at k=5 (more than 0.05 below native): {len(fails)}"]
        for f in fails:
            st = "-" if f["stitch_fvu"] is None else f"{f['stitch_fvu']:.3f}"
            sa = "-" if f["source_sae_fvu"] is None else f"{f['source_sae_fvu']:.3f}"
            lines.append(f"- {f['task']}: {f['transfer_retrain']:.3f}; T_down FVU {st} (median {f['median_stitch_fvu']:.3f}), "
                         f"source SAE FVU {sa} (median {f['median_source_sae_fvu']:.3f}); reason: {f['reason']}")
    arms = [a for a in ("source_A", "transfer_noretrain", "transfer_retrain", "transfer_reselect", "native_B", "random_B")
            if a in agg["sparse"]]
    lines += ["", "Per task, accuracy at k=5 (Wilson 95% interval) and dense probes:", "",
              "| task | n | " + " | ".join(LABELS[a] for a in arms) + " | dense A | dense A on T_down(h_B) |",
              "|---|---|" + "---|" * (len(arms) + 2)]
    for name, r in agg["tasks"].items():
        cells = [_ci(r["sparse"][a]["5"]) if "5" in r["sparse"].get(a, {}) else "-" for a in arms]
        dense = [_ci(r["dense"][a]) for a in ("dense_A", "dense_Tdown_noretrain")]
        lines.append(f"| {name} | {r['n_examples']} | " + " | ".join(cells + dense) + " |")
    t = agg.get("timing", {})
    if t:
        passes = "; ".join(f"{p['pass']}: {p['examples']} in {p['feature_seconds']:.0f} s" for p in t.get("passes", []))
        lines += ["", f"Features: {t['examples']} examples through both models in {t['feature_seconds']:.0f} s "
                  f"({t['examples_per_second'] or 0:.1f} examples/s; {passes}); probes: {t['probe_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"
