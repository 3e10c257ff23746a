"""Plots and the report.md section of the init sweep (widths x budgets x warm starts)."""

from __future__ import annotations

from pathlib import Path

from .report import PAPER, _fmt, _pct

KEY = "0.90"


def _saving(row: dict, ws: str, t: str = KEY) -> float | None:
    cell = row["savings"][ws]["fvu"].get(t) or {}
    return cell.get("savings")


def plot_sweep(result: dict, out_dir: str | Path) -> list[Path]:
    """``init_sweep_saving_vs_width.png`` and ``init_sweep_saving_vs_budget.png`` (saving at EV 0.90)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ws_list = result["config"]["warm_starts"]
    budgets = sorted(result["budgets"], key=int)
    widths = sorted(result["widths"], key=int)
    paths = []
    for name, xs, series, xlabel in (
            ("init_sweep_saving_vs_width.png", widths, [(ws, b) for ws in ws_list for b in budgets], "SAE width"),
            ("init_sweep_saving_vs_budget.png", budgets, [(ws, w) for ws in ws_list for w in widths], "token budget")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for ws, other in series:
            pts = []
            for x in xs:
                b, w = (other, x) if xlabel == "SAE width" else (x, other)
                v = _saving(result["budgets"][b]["widths"][w], ws)
                if v is not None:
                    pts.append((int(x), 100 * v))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{ws}, {'budget' if xlabel == 'SAE width' else 'width'} {other}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.axhspan(30, 50, color="tab:green", alpha=0.1, label="paper (Pythia)")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"FLOPs saved at EV {KEY} (%, stitch included)")
        ax.set_title(f"recipe: {result['recipe']}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def sweep_markdown(result: dict) -> str:
    cfg = result["config"]
    single = "all single-epoch (each cached training token read at most once)" if result["all_single_epoch"] else (
        "MULTI-EPOCH arms: " + ", ".join(k for k, v in result["single_epoch"].items() if not v))
    lines = ["## Transferred SAE as initialisation: sweep over width, budget and warm start (paper §3.1)", "",
             f"Recipe **{result['recipe']}**: k {cfg['k']}, constant lr {cfg['lr']}, AuxK {cfg['aux_k_coef']:g}, "
             f"unnormalised activations, scratch b_dec {cfg['scratch_b_dec']}, encoder reads "
             f"{'x - b_dec' if cfg['apply_b_dec_to_input'] else 'x'}, batch {cfg['batch_size']}, "
             f"{cfg['decode']} step; FLOPs: the dense step's (paper App. D accounting) whichever step ran. "
             f"Data: {single}; {result['n_train_tokens']} cached training tokens. Smaller budgets are the "
             "prefix of the largest budget's constant-lr run (the same run, read earlier). Stitch FLOPs "
             f"charged to every warm-start arm: {result['stitch_flops']:.3g}; source SAE FLOPs reported, not charged.", ""]
    lines += ["| width | source SAE FLOPs (not charged) | warm start | decoder norms | TopK agreement at step 0 | "
              "EV theta' | EV step 0 |", "|---|---|---|---|---|---|---|"]
    for w, ww in sorted(result["widths"].items(), key=lambda kv: int(kv[0])):
        for ws in cfg["warm_starts"]:
            i = ww["arms"][ws]["init"]
            lines.append(f"| {w} | {ww['source_sae']['train_flops']:.3g} | {ws} | {i['decoder_norm_min']:.3g}-"
                         f"{i['decoder_norm_max']:.3g} | {100 * i['topk_selection_agreement']:.1f}% | "
                         f"{i['ev_transferred']:.3f} | {i['ev_step0']:.3f} |")
    for b, bb in sorted(result["budgets"].items(), key=lambda kv: int(kv[0])):
        ts = list(next(iter(next(iter(bb["widths"].values()))["savings"].values()))["fvu"])
        lines += ["", f"### Budget {int(b):,} tokens ({bb['steps']} steps), recipe {result['recipe']}", "",
                  "| width | warm start | " + " | ".join(f"saving at EV {t}" for t in ts) + " | final EV (scratch / warm) |",
                  "|---|---|" + "---|" * len(ts) + "---|"]
        for w, row in sorted(bb["widths"].items(), key=lambda kv: int(kv[0])):
            for ws in cfg["warm_starts"]:
                cells = [_pct(row["savings"][ws]["fvu"][t]["savings"], row["savings"][ws]["fvu"][t]["savings_at_least"])
                         for t in ts]
                short = "" if row["budget_reached"][ws] else " (data ran out before this budget)"
                lines.append(f"| {w} | {ws} | " + " | ".join(cells)
                             + f" | {row['final_ev']['scratch']:.3f} / {row['final_ev'][ws]:.3f}{short} |")
        lines += ["", "Frontier fit L(C) = a C^-beta on FVU over widths: "
                  + "; ".join(f"{arm} a={_fmt(f['a'])}, beta={_fmt(f['beta'])} (R^2 {_fmt(f['r2'])})"
                              for arm, f in bb["fits_fvu"].items()) + "."]
    lines += ["", f"Paper: {PAPER['savings']}.", ""]
    return "\n".join(lines)
