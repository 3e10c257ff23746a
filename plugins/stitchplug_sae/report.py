"""The SAE part of a run's ``report.md``: a Table-2-style comparison and the latent-frequency plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# method.md §2, paper Table 2: (source SAE on A, transferred SAE on B)
PAPER_TABLE2 = {
    "pythia 70m.3 / 160m.4": {"l0": (16.0, 16.0), "fvu": (0.17, 0.52), "delta_loss": (0.36, 2.16), "dead": ("5.2%", "2.9%")},
    "gpt2 small.6 / medium.10": {"l0": (32.0, 32.0), "fvu": (0.11, 0.39), "delta_loss": (0.08, 0.96), "dead": ("<1%", "<1%")},
    "gemma-2 2b.20 / 9b.33": {"l0": (77.2, 74.7), "fvu": (0.21, 0.42), "delta_loss": (0.50, 0.85), "dead": ("1.5%", "3.5%")},
}
COLUMNS = (("source_on_A", "source SAE on A"), ("transferred_on_B", "transferred SAE on B"),
           ("random_on_B", "random SAE on B"))
ROWS = (
    ("L0", "reconstruction", "l0", "{:.1f}"),
    ("FVU", "reconstruction", "fvu", "{:.3f}"),
    ("FVU excl. massive dims", "reconstruction", "fvu_excl_massive", "{:.3f}"),
    ("FVU per dim (mean)", "reconstruction", "fvu_per_dim", "{:.3f}"),
    ("MSE", "reconstruction", "mse", "{:.4g}"),
    ("cosine similarity", "reconstruction", "cos", "{:.3f}"),
    ("clean CE (nats/token)", "delta_loss", "ce_clean", "{:.3f}"),
    ("Delta loss (nats/token)", "delta_loss", "delta_loss", "{:.3f}"),
    ("CE loss recovered (SAELens)", "ce_recovered", "ce_loss_score", "{:.3f}"),
    ("dead latents", "dead_latents", "dead_share", "{:.1%}"),
)


def _cell(ev: dict, evaluator: str, key: str, fmt: str) -> str:
    v = ev.get(evaluator, {}).get(key)
    if v is None:
        return "-"
    try:
        return fmt.format(v)
    except (TypeError, ValueError):
        return str(v)


def plot_frequencies(evaluation: dict, path: Path) -> bool:
    """Histogram of log10 per-latent firing frequency for each SAE; False if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    series = {label: evaluation.get(key, {}).get("latent_frequency", {}).get("latent_frequency")
              for key, label in COLUMNS}
    series = {k: np.asarray(v, dtype=float) for k, v in series.items() if v}
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(-6, 0, 49)
    for label, f in series.items():
        ax.hist(np.log10(np.clip(f, 1e-6, 1)), bins=bins, histtype="step", lw=1.5,
                label=f"{label} (dead {np.mean(f == 0):.1%})")
    ax.set_xlabel("log10 latent firing frequency (dead latents at -6)")
    ax.set_ylabel("latents")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_frequency_scatter(evaluation: dict, path: Path) -> bool:
    """Per-latent frequency on A (source SAE) vs on B (transferred SAE): latents keep their index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fa = evaluation.get("source_on_A", {}).get("latent_frequency", {}).get("latent_frequency")
    fb = evaluation.get("transferred_on_B", {}).get("latent_frequency", {}).get("latent_frequency")
    if not fa or not fb or len(fa) != len(fb):
        return False
    fa, fb = np.clip(np.asarray(fa), 1e-6, 1), np.clip(np.asarray(fb), 1e-6, 1)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(fa, fb, s=3, alpha=0.4)
    ax.plot([1e-6, 1], [1e-6, 1], color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("firing frequency on A (source SAE)")
    ax.set_ylabel("firing frequency on B (transferred SAE)")
    r = np.corrcoef(np.log10(fa), np.log10(fb))[0, 1]
    ax.set_title(f"per-latent frequency, log-corr {r:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _fvu_order_sentence(ev: dict) -> str:
    """What the FVUs on A and B show, written from the numbers (no sentence that the run contradicts)."""
    a = ev.get("source_on_A", {}).get("reconstruction", {}).get("fvu")
    b = ev.get("transferred_on_B", {}).get("reconstruction", {}).get("fvu")
    if a is None or b is None:
        return ""
    if b < a:
        return (" Here the transferred SAE's FVU on B is below the source SAE's on A: FVUs on A and on B are "
                "normalised by different variances, so this does not mean the transfer is better than the source.")
    return (f" As in the paper, the transferred SAE reconstructs B worse than the source SAE reconstructs A "
            f"(FVU {b:.3f} vs {a:.3f}; paper Table 2: 0.21 -> 0.42 on Gemma-2 2B -> 9B).")


def report_markdown(metrics: dict[str, Any], folder) -> str:
    """The section from ``metrics["sae"]`` (the SAE kind's results); plots go to ``folder.plot(...)``."""
    ev = metrics.get("sae", {})
    lines = ["## SAE transfer (paper Table 2)", "",
             "| metric | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for label, evaluator, key, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(ev.get(c, {}), evaluator, key, fmt) for c, _ in COLUMNS) + " |")
    lines += ["", "Paper (source SAE on A / transferred SAE on B):", "",
              "| pair | L0 | FVU | Delta loss | dead latents |", "|---|---|---|---|---|"]
    for pair, r in PAPER_TABLE2.items():
        lines.append(f"| {pair} | {r['l0'][0]} / {r['l0'][1]} | {r['fvu'][0]} / {r['fvu'][1]} | "
                     f"{r['delta_loss'][0]} / {r['delta_loss'][1]} | {r['dead'][0]} / {r['dead'][1]} |")
    massive = metrics.get("stitch", {}).get("recon", {}).get("massive_dims", {})
    lines += ["", f"Massive-activation dims excluded in 'FVU excl. massive dims': A {massive.get('source', [])}, "
              f"B {massive.get('target', [])}. Reconstruction metrics are on the cache's held-out documents; "
              "losses on documents after the cached slice.", ""]
    diag = ev.get("diagnostics")
    if diag:
        lines += ["### Where the transferred SAE's error on B comes from", "",
                  "Its error is exactly the stitch's round-trip error B->A->B plus the source SAE's error on the "
                  "mapped inputs `T_down(h_B)`, pushed through `P_up` (see `stitchplug_sae.diagnostics`).", "",
                  "| reconstruction of B's held-out activations | FVU | FVU excl. massive | FVU per dim |",
                  "|---|---|---|---|"]
        names = {"transferred": "transferred SAE", "round_trip_only": "round trip T_up(T_down(h)) alone",
                 "sae_error_only": "h + source-SAE error on T_down(h), mapped up"}
        for key, label in names.items():
            r = diag.get(key, {})
            if r:
                lines.append(f"| {label} | {r['fvu']:.3f} | {r['fvu_excl_massive']:.3f} | {r['fvu_per_dim']:.3f} |")
        r = diag.get("source_sae_on_mapped_inputs")
        if r:
            share = ""
            if diag.get("source_input_variance"):
                share = (f" The mapped inputs carry {diag['mapped_input_variance'] / diag['source_input_variance']:.1%} "
                         "of the variance of A's real activations.")
            lines += ["", f"In A's space, the source SAE reconstructs the mapped inputs `T_down(h_B)` with FVU "
                      f"{r['fvu']:.3f} ({r['fvu_excl_massive']:.3f} excl. massive), against "
                      f"{_cell(ev.get('source_on_A', {}), 'reconstruction', 'fvu', '{:.3f}')} on A's real activations."
                      + share + _fvu_order_sentence(ev), ""]
    if plot_frequencies(ev, folder.plot("latent_frequency.png")):
        lines += ["![latent frequencies](latent_frequency.png)", ""]
    if plot_frequency_scatter(ev, folder.plot("latent_frequency_scatter.png")):
        lines += ["![per-latent frequency A vs B](latent_frequency_scatter.png)", ""]
    return "\n".join(lines)
