"""Plots and the report.md section for the init experiment (paper Fig. 2, Tables 3-4)."""

from __future__ import annotations

from pathlib import Path

# Paper numbers (method.md §3) shown next to ours for reference.
PAPER = {
    "savings": "30-50% fewer FLOPs around 0.90 explained variance (Pythia); small widths can cost more than scratch",
    "table3": {"pythia-70m SAE": 8.2e16, "pythia-160m SAE": 1.2e17, "stitch": 1.4e15},
    "table4": [  # frontier MSE vs FLOPs, L = a * C^-beta
        ("pythia-160m", "scratch", 41.2, 0.16), ("pythia-160m", "stitched", 18.5, 0.14),
        ("gpt2-medium", "scratch", 42.3, 0.15), ("gpt2-medium", "stitched", 5.0, 0.10),
    ],
}


def _fmt(v, spec: str = ".3g") -> str:
    return "never" if v is None else format(v, spec)


def _pct(v, at_least=None) -> str:
    if v is None:
        return "n/a" if at_least is None else f">= {100 * at_least:+.1f}% (scratch never crossed)"
    return f"{100 * v:+.1f}%"


def plot(result: dict, out_dir: str | Path) -> list[Path]:
    """Write ``init_savings.png`` (savings vs threshold) and ``init_fvu_vs_flops.png``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, metric, title in zip(axes, ("fvu", "fvu_excl_massive"), ("raw EV", "EV excl. massive dims")):
        for width, w in result["widths"].items():
            table = w["savings"][metric]
            ts = [float(t) for t in table if table[t]["savings"] is not None]
            ss = [100 * table[t]["savings"] for t in table if table[t]["savings"] is not None]
            ax.plot(ts, ss, marker="o", label=f"width {width}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.axhspan(30, 50, color="tab:green", alpha=0.1, label="paper (Pythia) ~0.9 EV")
        ax.set_xlabel("explained-variance threshold")
        ax.set_title(title)
    axes[0].set_ylabel("FLOPs saved by stitched init (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "init_savings.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("fvu", "fvu_excl_massive")):
        for (width, w), color in zip(result["widths"].items(), plt.cm.viridis_r([0.2, 0.4, 0.6, 0.8, 1.0] * 4)):
            for arm, style in (("scratch", "--"), ("stitched", "-")):
                pts = [p for p in w["arms"][arm]["curve"] if p["flops"] > 0 and p[metric] > 0]
                ax.plot([p["flops"] for p in pts], [p[metric] for p in pts], style, color=color,
                        label=f"{arm} {width}")
        for arm, style in (("scratch", "--"), ("stitched", "-")):
            fit = result["fits"][metric][arm]
            if fit["a"] is not None:
                xs = [c for c in fit["frontier"]["flops"] if c > 0]
                ax.plot(xs, [fit["a"] * c ** -fit["beta"] for c in xs], style, color="red", lw=1,
                        label=f"fit {arm}: a={fit['a']:.3g}, beta={fit['beta']:.3f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs (stitched arm includes the stitch)")
        ax.set_ylabel(metric.upper().replace("_", " "))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "init_fvu_vs_flops.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def markdown(result: dict) -> str:
    """The report.md section: savings table per width, ledger, fits, and the paper's numbers."""
    lines = ["## Transferred SAE as initialisation (paper §3.1)", ""]
    if result.get("synthetic"):
        lines += ["**Synthetic stand-in data** (no default-pair run folder was available).", ""]
    cfg = result["config"]
    if "single_epoch" in result:
        lines += [f"Recipe **{cfg.get('recipe', 'custom')}**, warm start **{cfg.get('warm_start', 'fold')}**, "
                  f"{cfg.get('decode', 'dense')} step (dense-decode FLOPs charged). "
                  + ("**Single-epoch**: each cached training token read at most once"
                     if result["single_epoch"] else f"**Multi-epoch** (up to {result['epochs']} passes)")
                  + f"; {result['passes']:.2f} passes over {result['n_train_tokens']} cached training tokens.", ""]
    lines += [f"Both arms: {cfg['steps']} steps x {cfg['batch_size']} tokens, constant lr {cfg['lr']}, "
              f"AuxK coefficient {cfg.get('aux_k_coef', 0.0):g}, EV moving average over {cfg['ma_window']} evaluations "
              f"on {result['n_eval_tokens']} held-out tokens; massive dims excluded in the second EV: "
              f"{result['massive_dims'] or 'none'}. Stitch fitting FLOPs charged to the stitched arm: "
              f"{result['stitch_flops']:.3g}"
              + (f"; source SAE (already paid): {result['source_sae_flops']:.3g}." if result.get("source_sae_flops") else "."), ""]
    for width, w in result["widths"].items():
        led, ren = w["ledger"], w["init_renorm"]
        lines += [f"### width {width} (k {w['k']})", "",
                  f"SAE step: {led['sae_step_flops_counted']:.3g} FLOPs counted, {led['sae_step_flops_analytic']:.3g} analytic "
                  f"(ratio {led['counted_over_analytic']:.3f}). theta' decoder row norms "
                  f"{ren['decoder_norm_min']:.3g}-{ren['decoder_norm_max']:.3g}; TopK selection kept at step 0 "
                  f"(warm start {ren.get('warm_start', 'fold')}): {100 * ren['topk_selection_agreement']:.1f}%; EV of theta' "
                  f"{ren['ev_before_fold']:.3f}, of the stitched arm's step 0 {ren['ev_after_fold']:.3f}. Dead latents at the end: scratch "
                  f"{100 * w['arms']['scratch']['dead_fraction']:.1f}%, stitched {100 * w['arms']['stitched']['dead_fraction']:.1f}%.", "",
                  "| EV threshold | scratch FLOPs | stitched FLOPs | savings | savings (excl. massive) |",
                  "|---|---|---|---|---|"]
        raw, exc = w["savings"]["fvu"], w["savings"]["fvu_excl_massive"]
        for t in raw:
            lines.append(f"| {t} | {_fmt(raw[t]['scratch_flops'])} | {_fmt(raw[t]['stitched_flops'])} | "
                         f"{_pct(raw[t]['savings'], raw[t].get('savings_at_least'))} | "
                         f"{_pct(exc[t]['savings'], exc[t].get('savings_at_least'))} |")
        ls, lt = w["arms"]["scratch"]["ledger"], w["arms"]["stitched"]["ledger"]
        incl = (f", {lt['total_incl_source_sae']:.3g} including the source SAE" if "total_incl_source_sae" in lt else "")
        lines += ["", f"Budget (Table 3 analogue): scratch {ls['total_flops']:.3g} FLOPs over {ls['steps']} steps; "
                  f"stitched {lt['total_flops']:.3g} = stitch {lt['offset_flops']:.3g} + SAE {lt['sae_flops']:.3g}{incl}."]
        final = {arm: w["arms"][arm]["curve"][-1] for arm in ("scratch", "stitched")}
        lines += ["", f"Final EV: scratch {1 - final['scratch']['fvu']:.3f}, stitched {1 - final['stitched']['fvu']:.3f} "
                  f"(excl. massive: {1 - final['scratch']['fvu_excl_massive']:.3f} / {1 - final['stitched']['fvu_excl_massive']:.3f}). "
                  "'never' = the arm did not reach the threshold in this budget: no savings can be stated, only a "
                  "lower bound when the stitched arm crossed (scratch would need more than its whole budget).", ""]
    lines += ["### Frontier fit L(C) = a * C^-beta (lower envelope over widths)", "",
              "| loss | arm | a | beta | R^2 | points |", "|---|---|---|---|---|---|"]
    for metric, arms in result["fits"].items():
        for arm, fit in arms.items():
            lines.append(f"| {metric} | {arm} | {_fmt(fit['a'])} | {_fmt(fit['beta'])} | {_fmt(fit['r2'])} | {fit['n_points']} |")
    lines += ["", "Paper (Table 4, frontier MSE vs FLOPs): "
              + "; ".join(f"{m} {arm} a={a}, beta={b}" for m, arm, a, b in PAPER["table4"])
              + f". Table 3 FLOPs (Pythia, k=64, 32k latents): "
              + ", ".join(f"{k} {v:.1e}" for k, v in PAPER["table3"].items())
              + f". Savings: {PAPER['savings']}.", ""]
    return "\n".join(lines)
