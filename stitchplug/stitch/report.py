"""Markdown tables for stitch results: paper Table 1 next to ours, reconstruction, SVCCA profile."""

from __future__ import annotations

from typing import Any, Mapping

PAPER_TABLE1 = [
    # pair, CE A, CE B, A->B, B->A, A->B->A, B->A->B  (method.md §1, paper Table 1)
    ("pythia-70m-deduped.3 -> pythia-160m-deduped.4 (paper)", 3.60, 3.14, 3.99, 4.21, 3.62, 3.29),
    ("gpt2-small.6 -> gpt2-medium.10 (paper)", 3.07, 2.77, 3.08, 3.35, 3.07, 2.81),
    ("gemma-2-2b.20 -> gemma-2-9b.33 (paper)", 2.52, 2.36, 3.28, 2.73, 2.53, 2.66),
]
CE_KEYS = ("ce_a", "ce_b", "a_to_b", "b_to_a", "a_to_b_to_a", "b_to_a_to_b")


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "nan"
        return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.3g}"
    return str(x)


def table1_markdown(ours: Mapping[str, Mapping[str, Any]]) -> str:
    """Table 1 with the paper's rows and ours (``{pair label: stitched_ce result}``)."""
    lines = ["| pair (A.lA -> B.lB) | CE A | CE B | A->B | B->A | A->B->A | B->A->B | share patched A/B |",
             "|---|---|---|---|---|---|---|---|"]
    for row in PAPER_TABLE1:
        lines.append("| " + " | ".join([row[0]] + [f"{v:.2f}" for v in row[1:]]) + " | - |")
    for label, r in ours.items():
        share = r.get("share_patched", {})
        sp = f"{share.get('a', 0):.3f} / {share.get('b', 0):.3f}" if share else "-"
        lines.append("| " + " | ".join([f"**{label}** (ours)"] + [_f(r.get(k)) for k in CE_KEYS]) + f" | {sp} |")
    return "\n".join(lines)


def recon_markdown(recon: Mapping[str, Any]) -> str:
    """One row per map (up, down, aba, bab) with MSE and the three FVU variants."""
    names = {"up": "up (A->B vs B)", "down": "down (B->A vs A)", "aba": "A->B->A vs A", "bab": "B->A->B vs B"}
    lines = ["| map | MSE | FVU | FVU excl. massive | FVU per dim (mean / max) | cos |",
             "|---|---|---|---|---|---|"]
    for key, label in names.items():
        r = recon.get(key)
        if not r:
            continue
        lines.append(f"| {label} | {r['mse']:.4g} | {r['fvu']:.4f} | {r['fvu_excl_massive']:.4f} | "
                     f"{r['fvu_per_dim']:.4f} / {r.get('fvu_per_dim_max', float('nan')):.3f} | {r['cos']:.4f} |")
    m = recon.get("massive_dims", {})
    lines.append("")
    lines.append(f"Massive dims: source {m.get('source', [])}, target {m.get('target', [])}; "
                 f"held-out tokens: {recon.get('n_tokens', '?')}.")
    return "\n".join(lines)


def svcca_markdown(profile: Mapping[int, float], source_layer: int) -> str:
    best = max(profile, key=profile.get)
    lines = [f"| B layer | mean SVCCA with A.{source_layer} |", "|---|---|"]
    for layer, v in sorted(profile.items()):
        lines.append(f"| {layer}{' (best)' if layer == best else ''} | {v:.4f} |")
    return "\n".join(lines)
