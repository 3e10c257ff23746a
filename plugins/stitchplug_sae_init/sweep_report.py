"""Plots and the report.md section of the init sweep (widths x budgets x warm starts)."""

from __future__ import annotations

from pathlib import Path

from .report import PAPER, _fmt, _pct

KEY = "0.90"


def saving_points(result: dict, ws: str, t: str, *, by: str, other: str) -> list[tuple[int, float, bool]]:
    """``(x, saving %, is_lower_bound)`` for warm start ``ws`` at threshold ``t`` along ``by`` ('width' or
    'budget'), the other axis fixed at ``other``. A lower bound (scratch never crossed, the warm start
    did) is kept and flagged; a cell where the warm start never crossed has no point."""
    xs = sorted(result["widths"] if by == "width" else result["budgets"], key=int)
    pts = []
    for x in xs:
        b, w = (other, x) if by == "width" else (x, other)
        cell = result["budgets"][b]["widths"][w]["savings"][ws]["fvu"].get(t) or {}
        if cell.get("savings") is not None:
            pts.append((int(x), 100 * cell["savings"], False))
        elif cell.get("savings_at_least") is not None:
            pts.append((int(x), 100 * cell["savings_at_least"], True))
    return pts


def _thresholds(result: dict) -> list[str]:
    row = next(iter(next(iter(result["budgets"].values()))["widths"].values()))
    return list(next(iter(row["savings"].values()))["fvu"])


def plot_sweep(result: dict, out_dir: str | Path) -> list[Path]:
    """``init_sweep_saving_vs_width.png`` and ``init_sweep_saving_vs_budget.png``: one panel per EV
    threshold (the last is the paper's 0.90), filled markers for savings, hollow ones for lower bounds
    (scratch never crossed), and a panel that says so where no warm start crossed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ws_list = result["config"]["warm_starts"]
    ts = _thresholds(result)
    paths = []
    for name, by, others in (("init_sweep_saving_vs_width.png", "width", sorted(result["budgets"], key=int)),
                             ("init_sweep_saving_vs_budget.png", "budget", sorted(result["widths"], key=int))):
        xs = [int(x) for x in sorted(result["widths"] if by == "width" else result["budgets"], key=int)]
        fig, axes = plt.subplots(1, len(ts), figsize=(2.6 * len(ts) + 1, 3.4), sharey=True, squeeze=False)
        for i, (ax, t) in enumerate(zip(axes[0], ts)):
            drawn = 0
            for j, (ws, other) in enumerate((ws, o) for ws in ws_list for o in others):
                pts = saving_points(result, ws, t, by=by, other=other)
                if not pts:
                    continue
                drawn += 1
                colour = f"C{j}"
                label = f"{ws}, {'budget' if by == 'width' else 'width'} {other}"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, lw=1, label=label if i == 0 else None)
                for x, y, lower in pts:
                    ax.plot(x, y, marker="^" if lower else "o", color=colour,
                            markerfacecolor="none" if lower else colour, ls="none")
            if not drawn:
                ax.text(0.5, 0.5, "no warm start\nreached this EV", ha="center", va="center",
                        transform=ax.transAxes, fontsize=8, color="grey")
            ax.axhline(0, color="grey", lw=0.8)
            if t == KEY:
                ax.axhspan(30, 50, color="tab:green", alpha=0.1, label="paper (Pythia)")
            ax.set_xscale("log")
            ax.set_xlim(xs[0] / 1.25, xs[-1] * 1.25)
            ax.set_xticks(xs)
            ax.set_xticklabels([f"{x:,}" for x in xs], rotation=45, fontsize=7)
            ax.minorticks_off()
            ax.set_xlabel("SAE width" if by == "width" else "token budget", fontsize=8)
            ax.set_title(f"EV {t}", fontsize=9)
        axes[0][0].set_ylabel("FLOPs saved (%, stitch included)", fontsize=8)
        handles, labels = [], []
        for ax in axes[0]:
            for h, l in zip(*ax.get_legend_handles_labels()):
                if l not in labels:
                    handles.append(h)
                    labels.append(l)
        fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(4, len(labels) or 1), frameon=False)
        fig.suptitle(f"recipe: {result['recipe']} (hollow triangles: lower bounds, scratch never crossed)", fontsize=9)
        fig.tight_layout(rect=(0, 0.12, 1, 0.95))
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def plot_curves(result: dict, out_dir: str | Path) -> Path:
    """``init_sweep_curves.png``: per width, held-out EV (top) and the share of dead latents (bottom,
    where the curve logged it) against FLOPs charged, for every arm; the EV thresholds are dotted and
    the largest budget's last step ends each line. The warm arms start at the stitch's FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted(result["widths"], key=int)
    ts = [float(t) for t in _thresholds(result)]
    width_in = 3.2 * len(widths) + 0.6
    fig, axes = plt.subplots(2, len(widths), figsize=(width_in, 5.2), squeeze=False,
                             sharex="col", gridspec_kw={"height_ratios": [2, 1]})
    for col, w in enumerate(widths):
        top, bottom = axes[0][col], axes[1][col]
        arms = result["widths"][w]["arms"]
        for j, arm in enumerate(sorted(arms, key=lambda a: (a != "scratch", a))):  # same colour per arm everywhere
            c = arms[arm]["curve"]
            f = [p["flops"] for p in c]
            top.plot(f, [p["ev"] for p in c], color=f"C{j}", lw=1.2, label=arm)
            dead = [(p["flops"], p["dead"]) for p in c if "dead" in p]
            if dead:
                bottom.plot([x for x, _ in dead], [100 * y for _, y in dead], color=f"C{j}", lw=1.2)
        lo = min(ts[0] - 0.05, 0.6)
        top.set_ylim(lo, 1.0)
        for t in ts:
            top.axhline(t, color="grey", lw=0.6, ls=":")
        top.set_title(f"width {int(w):,}", fontsize=9)
        bottom.set_xlabel("FLOPs charged (stitch included)", fontsize=8)
        for ax in (top, bottom):
            ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("held-out EV", fontsize=8)
    axes[1][0].set_ylabel("dead latents (%)", fontsize=8)
    axes[0][0].legend(fontsize=7, frameon=False, loc="lower right")
    import textwrap

    title = textwrap.wrap(f"recipe: {result['recipe']}", int(11 * width_in))
    fig.suptitle("\n".join(title), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.035 * len(title)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "init_sweep_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _share(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


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
    lines += ["", "Latents per arm: silent = fires on none of the held-out tokens (at step 0 and at the end); "
              "dead = did not fire in the last training steps (the trainer's dead window); resampled = latents "
              "redrawn by `resample_every` (their pool's FLOPs are charged).", "",
              "| width | arm | silent at step 0 | silent at end | dead at end | resampled |", "|---|---|---|---|---|---|"]
    for w, ww in sorted(result["widths"].items(), key=lambda kv: int(kv[0])):
        for arm, a in ww["arms"].items():
            s0, s1 = a["curve"][0].get("silent_eval"), a["curve"][-1].get("silent_eval")
            lines.append(f"| {w} | {arm} | {_share(s0)} | {_share(s1)} | {_share(a.get('dead_fraction'))} "
                         f"| {a.get('resampled_latents', 0):,} |")
    for b, bb in sorted(result["budgets"].items(), key=lambda kv: int(kv[0])):
        ts = _thresholds(result)
        top = ts[-1]
        lines += ["", f"### Budget {int(b):,} tokens ({bb['steps']} steps), recipe {result['recipe']}", "",
                  "| width | warm start | " + " | ".join(f"saving at EV {t}" for t in ts)
                  + f" | at EV {top} without the stitch | stitch / scratch's FLOPs to EV {top} | final EV (scratch / warm) |",
                  "|---|---|" + "---|" * len(ts) + "---|---|---|"]
        for w, row in sorted(bb["widths"].items(), key=lambda kv: int(kv[0])):
            for ws in cfg["warm_starts"]:
                cells = [_pct(row["savings"][ws]["fvu"][t]["savings"], row["savings"][ws]["fvu"][t]["savings_at_least"])
                         for t in ts]
                last = row["savings"][ws]["fvu"][top]
                bare = _pct(last.get("savings_excl_offset"), last.get("savings_at_least_excl_offset"))
                share = _share(last.get("offset_share"))
                short = "" if row["budget_reached"][ws] else " (data ran out before this budget)"
                lines.append(f"| {w} | {ws} | " + " | ".join(cells) + f" | {bare} | {share}"
                             + f" | {row['final_ev']['scratch']:.3f} / {row['final_ev'][ws]:.3f}{short} |")
        lines += ["", "Frontier fit L(C) = a C^-beta on FVU over widths: "
                  + "; ".join(f"{arm} a={_fmt(f['a'])}, beta={_fmt(f['beta'])} (R^2 {_fmt(f['r2'])})"
                              for arm, f in bb["fits_fvu"].items()) + "."]
    lines += ["", f"Paper: {PAPER['savings']}.", ""]
    return "\n".join(lines)
