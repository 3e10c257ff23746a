"""The core's sections of ``report.md`` (header, SVCCA profile, reconstruction, Table 1, stage times).

Artifact kinds and other plugins add their own sections with
:meth:`~stitchplug.runfolder.RunFolder.add_report_section`; the run folder assembles ``report.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..runfolder import RunFolder
from ..stitch.report import recon_markdown, svcca_markdown, table1_markdown


def _plot_svcca(profile: dict, source_layer: int, best: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted(int(k) for k in profile)
    vals = [profile[k] if k in profile else profile[str(k)] for k in layers]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(layers, vals, marker="o")
    ax.axvline(best, color="tab:red", ls="--", label=f"chosen B layer {best}")
    ax.set_xlabel("layer of B")
    ax.set_ylabel(f"mean SVCCA with A.{source_layer}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def core_markdown(metrics: dict[str, Any], folder: RunFolder) -> str:
    """Header, layer choice (with its plot), stitch reconstruction and Table 1 of a run."""
    cfg = metrics["config"]
    stitch = metrics["stitch"]
    meta = stitch["meta"]
    lA, lB = meta["source_layer"], meta["target_layer"]
    cache = metrics["cache"]
    pair = f"{cfg['models']['source']}.{lA} -> {cfg['models']['target']}.{lB}"
    lines = [f"# stitchplug run: {cfg['artifact']} transfer, {pair}", ""]
    ar = cache.get("alignment_rate", {})
    lines += [f"Cache: {cache['n_tokens']:,} aligned tokens of `{cfg['cache']['corpus']}` "
              f"(alignment rate {ar.get('source', 0):.1%} of A's tokens, {ar.get('target', 0):.1%} of B's), "
              f"context {cfg['cache']['context_size']}, held-out share {cfg['cache']['eval_fraction']} of documents. "
              f"Stitch solver `{cfg['stitch']['solver']}`, seed {cfg['seed']}.", ""]
    if stitch.get("svcca"):
        prof = {int(k): v for k, v in stitch["svcca"]["profile"].items()}
        _plot_svcca(prof, lA, lB, folder.plot("svcca_profile.png"))
        lines += ["## Layer choice (mean SVCCA)", ""]
        sel = cache.get("layer_selection")
        if sel:
            lines += [f"Chosen by an SVCCA probe of {sel['tokens']:,} tokens over all of B's layers, run in the "
                      f"cache's own first forward batches ({sel['seconds']:.0f} s with the planning pass, before "
                      f"caching the rest); the cache holds only B's layer {sel['target_layer']}.", ""]
        lines += [svcca_markdown(prof, lA), "", "![](svcca_profile.png)", ""]
    lines += ["## Stitch reconstruction (held-out)", "", recon_markdown(stitch["recon"]), ""]
    fit = stitch.get("fit", {})
    if fit:
        lines += [f"Fit: {fit.get('solver', '?')}, {fit.get('tokens', fit.get('train_tokens', '?'))} training tokens, "
                  f"{fit.get('flops', '?')} FLOPs.", ""]
    lines += ["## Stitched next-token loss (paper Table 1)", "",
              table1_markdown({pair: metrics["stitched_ce"]}), "",
              "For a pair with different tokenizers only aligned positions are patched "
              "(share patched in the last column); CE is over all predicted non-special tokens. "
              "Paper rows are same-tokenizer pairs trained on ~200M tokens.", ""]
    return "\n".join(lines)


def stage_times_markdown(metrics: dict[str, Any]) -> str:
    secs = metrics.get("stage_seconds", {})
    lines = ["## Stage wall time (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in secs.items() if v is not None]
    return "\n".join(lines)
