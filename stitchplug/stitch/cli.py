"""``stitchplug layers`` and ``stitchplug stitch train|eval``."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from ..cli import config_options
from pydantic import ConfigDict

from ..config import RunConfig
from ..errors import StageError
from ..runfolder import RunFolder


class StitchCommandConfig(RunConfig):
    """The run config minus nothing: artifact kinds' sections (``sae:``, ``probe:`` ...) of a full run
    config file are ignored, so one file serves ``stitchplug run``, ``layers`` and ``stitch``."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True, validate_assignment=True)


def _paths(cfg: RunConfig, cache: str | None, out: str | None = None) -> tuple[Path, Path]:
    """The cache and stitch paths: given ones, else the run folder's (the layout `stitchplug run` writes)."""
    rf = RunFolder(cfg.output_dir)
    return Path(cache) if cache else rf.cache, Path(out) if out else rf.stitch


def _run_folder_of(stitch_file: Path) -> RunFolder | None:
    """The run folder ``stitch_file`` is the stitch of (``RUN/stitch/stitch.safetensors``), if any."""
    rf = RunFolder(stitch_file.resolve().parent.parent)
    return rf if rf.stitch == stitch_file.resolve() and (rf.root / "stages").is_dir() else None


def _write(results: dict, markdown: str, out_stem: Path, as_json: bool) -> None:
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    json_path = out_stem.with_suffix(".json")
    md_path = out_stem.with_suffix(".md")
    json_path.write_text(json.dumps(results, indent=2, default=str))
    md_path.write_text(markdown + "\n")
    if as_json:
        click.echo(json.dumps(results, default=str))
    else:
        click.echo(markdown)
        click.echo(f"\nwrote {json_path} and {md_path}")


def register(cli: click.Group) -> None:
    """Add ``layers`` and the ``stitch`` group to the top-level CLI."""

    @cli.command("layers")
    @config_options(StitchCommandConfig)
    @click.option("--cache", "cache_path", default=None, help="Paired activation cache (default: OUTPUT_DIR/cache.h5).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def layers(cfg: RunConfig, cache_path, as_json):
        """Mean SVCCA correlation of A at the source layer with every cached layer of B; prints the argmax."""
        from .api import choose_layers, open_cache
        from .report import svcca_markdown

        cache = open_cache(_paths(cfg, cache_path)[0], cfg)
        res = choose_layers(cache, cfg.stitch)
        if as_json:
            click.echo(json.dumps(res))
            return
        click.echo(svcca_markdown(res["profile"], res["source_layer"]))
        click.echo(f"\nbest target layer: {res['best_target_layer']}")

    @cli.group("stitch")
    def stitch_group():
        """Fit and evaluate the affine stitch between A and B."""

    @stitch_group.command("train")
    @config_options(StitchCommandConfig)
    @click.option("--cache", "cache_path", default=None, help="Paired activation cache (default: OUTPUT_DIR/cache.h5).")
    @click.option("--out", "out_path", default=None,
                  help="Stitch file to write (default: OUTPUT_DIR/stitch/stitch.safetensors).")
    @click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop Adam after this many steps.")
    @click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
    def train_cmd(cfg: RunConfig, cache_path, out_path, max_steps, as_json):
        """Fit the stitch on the cache's training split and report held-out reconstruction."""
        from .api import open_cache, train
        from .report import recon_markdown, svcca_markdown

        from .. import dist

        rank, _ = dist.init_from_env(cfg.device)  # under torchrun: data-parallel fit, rank 0 saves and reports
        cache_p, out_p = _paths(cfg, cache_path, out_path)
        rf = _run_folder_of(out_p)
        if rf is not None and rf.marker("stitch").exists():
            raise StageError(f"{out_p} is the stitch of run folder {rf.root}, whose stages were built on it; "
                             f"`stitch train` does not replace it behind them: write to another file with --out, or "
                             f"re-run `stitchplug run` with the new --stitch-* settings and another --output-dir")
        lock = rf.writing("stitchplug stitch train") if rf is not None and rank == 0 else contextlib.nullcontext()
        with lock:  # only rank 0 writes
            res = train(open_cache(cache_p, cfg), cfg.stitch, out_p, seed=cfg.seed, max_steps=max_steps,
                        progress=not as_json and rank == 0, device=cfg.device)
        if rank != 0:
            return
        fit = res["fit"]
        md = [f"## Stitch {res['meta']['source_model']}.{res['meta']['source_layer']} -> "
              f"{res['meta']['target_model']}.{res['meta']['target_layer']}",
              "",
              f"solver {fit['solver']}, {fit['train_tokens']} training tokens, {fit['steps']} Adam steps, "
              f"{fit['flops']:.3g} FLOPs, {fit['wall_s']:.1f} s; held-out Eq. 3 loss {res['recon']['loss']['total']:.5g}",
              "", recon_markdown(res["recon"])]
        if res["svcca"]:
            md += ["", svcca_markdown(res["svcca"]["profile"], res["svcca"]["source_layer"])]
        _write(res, "\n".join(md), out_p.with_name(out_p.stem + "_train"), as_json)

    @stitch_group.command("eval")
    @config_options(StitchCommandConfig)
    @click.option("--cache", "cache_path", default=None, help="Paired activation cache (default: OUTPUT_DIR/cache.h5).")
    @click.option("--stitch", "stitch_path", default=None,
                  help="Stitch file (default: OUTPUT_DIR/stitch/stitch.safetensors).")
    @click.option("--ce-docs", type=click.IntRange(min=0), default=0,
                  help="Also measure the stitched next-token loss (Table 1) on this many held-out documents.")
    @click.option("--ce-doc-start", type=click.IntRange(min=0), default=None,
                  help="First corpus document for the stitched loss (default: after the cache's documents).")
    @click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
    def eval_cmd(cfg: RunConfig, cache_path, stitch_path, ce_docs, ce_doc_start, as_json):
        """Held-out reconstruction of a saved stitch and, with --ce-docs, the stitched next-token loss."""
        from .api import evaluate, heldout_texts, open_cache, stitched_ce_eval
        from .model import Stitch
        from .report import recon_markdown, table1_markdown

        cache_p, st_p = _paths(cfg, cache_path, stitch_path)
        cache = open_cache(cache_p, cfg)
        res = evaluate(cache, st_p, cfg.stitch)
        md = [recon_markdown(res["recon"])]
        if ce_docs > 0:
            from ..adapter import load_model

            meta = res["meta"]
            kw = dict(device=cfg.device, dtype=cfg.dtype, cache_dir=cfg.models.cache_dir)
            a = load_model(meta.get("source_model") or cfg.models.source, **kw)
            b = load_model(meta.get("target_model") or cfg.models.target, **kw)
            texts = heldout_texts(cfg.cache, cache, ce_docs, ce_doc_start)
            ce = stitched_ce_eval(Stitch.load(st_p), a, b, texts, cfg.cache.context_size)
            res["stitched_ce"] = ce
            label = f"{a.name}.{meta['source_layer']} -> {b.name}.{meta['target_layer']}"
            md += ["", table1_markdown({label: ce})]
        _write(res, "\n".join(md), st_p.with_name(st_p.stem + "_eval"), as_json)
