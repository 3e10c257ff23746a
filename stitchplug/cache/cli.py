"""``stitchplug cache``: build (or resume) the paired activation cache for a model pair."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click
from pydantic import BaseModel, ConfigDict, Field

from ..config import CacheConfig, ModelsConfig, StitchConfig
from ..runfolder import RunFolder


class CacheCommandConfig(BaseModel):
    """What ``stitchplug cache`` needs: the model pair, the cache section and an output file.

    Unknown top-level sections (``stitch``, ``sae`` ... of a full run config file) are ignored, so
    the same YAML/TOML file serves ``stitchplug run`` and ``stitchplug cache``.
    """

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True, validate_assignment=True)

    output_dir: str = "runs/default"
    """Run folder; the cache goes to OUTPUT_DIR/cache.h5 unless --output is given."""
    output: str | None = None
    """HDF5 entry file to write (default: OUTPUT_DIR/cache.h5); its shards go to OUTPUT.shards/."""
    seed: int = Field(0, ge=0)
    """Seed of the stored default train/eval document split."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Device for the models."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype of the models (the storage dtype is cache.dtype)."""
    aligner: str = "auto"
    """Token aligner: auto (identity for one tokenizer, end-offsets otherwise) or a registered name."""
    progress: bool = True
    """Show a progress bar."""
    shard_rows: int | None = Field(None, ge=1)
    """Aligned tokens per shard file (None: about 64 MiB per shard). Part of the cache's identity."""
    models: ModelsConfig = ModelsConfig()
    cache: CacheConfig = CacheConfig()
    stitch: StitchConfig = StitchConfig()
    """Only stitch.source_layer, stitch.target_layer and stitch.svcca_tokens are read: they decide which layers are cached."""


def run_cache(cfg: CacheCommandConfig, log=None) -> Path:
    """Load both models and build the cache described by ``cfg`` (see :func:`build_cache`)."""
    from ..adapter import load_model
    from .corpus import open_corpus
    from .select import build_selected_cache, layer_request
    from .writer import check_existing

    out = Path(cfg.output) if cfg.output else RunFolder(cfg.output_dir).cache
    # A foreign or corrupt file at the output path is reported before any model is loaded.
    check_existing(out, {"source_model": cfg.models.source, "target_model": cfg.models.target,
                         "corpus": cfg.cache.corpus})
    open_corpus(cfg.cache.corpus, limit=0)  # so is an unknown corpus or an unreachable hub
    source = load_model(cfg.models.source, device=cfg.device, dtype=cfg.dtype, cache_dir=cfg.models.cache_dir)
    target = load_model(cfg.models.target, device=cfg.device, dtype=cfg.dtype, cache_dir=cfg.models.cache_dir)
    c = cfg.cache
    source_layers, target_layers = layer_request(c, cfg.stitch)
    path, _ = build_selected_cache(out, source, target, target_layers=target_layers,
                                   svcca_tokens=cfg.stitch.svcca_tokens, source_layers=source_layers,
                                   corpus=c.corpus, doc_start=c.doc_start, max_docs=c.max_docs, tokens=c.tokens,
                                   context_size=c.context_size, dtype=c.dtype, batch_size=c.batch_size,
                                   aligner=cfg.aligner, eval_fraction=c.eval_fraction, split_seed=cfg.seed,
                                   progress=cfg.progress, shard_rows=cfg.shard_rows, queue_depth=c.queue_depth,
                                   host_workers=c.host_workers,
                                   log=log)
    return path


def verify_command(cfg: CacheCommandConfig) -> int:
    """``stitchplug cache --verify``: one line per shard that fails, exit status 1 if any does."""
    from ..errors import CacheError
    from .integrity import UNVERIFIABLE, shard_files, verify_cache

    out = Path(cfg.output) if cfg.output else RunFolder(cfg.output_dir).cache
    shards = shard_files(out)
    if not shards:
        raise CacheError(f"no cache shards to verify next to {out} (expected {out}.shards/shard_*.h5)")
    problems = verify_cache(out)
    bad = {p: why for p, why in problems.items() if why != UNVERIFIABLE}
    for p, why in problems.items():
        click.echo(f"{'bad shard' if p in bad else 'unverified shard'}: {p}: {why}", err=True)
    click.echo(f"{out}: {len(shards) - len(problems)} of {len(shards)} shards verified"
               + (f", {len(bad)} bad: re-run `stitchplug cache` with the same settings to rewrite them" if bad else ""))
    return 1 if bad else 0


def register(cli: click.Group) -> None:
    from ..cli import config_options

    @cli.command("cache")
    @click.option("--verify", is_flag=True,
                  help="Check every shard of the existing cache against its stored digests and exit "
                       "(one line per bad shard, exit 1 if any); builds nothing.")
    @config_options(CacheCommandConfig, with_preset=False)
    @click.pass_context
    def cache_cmd(ctx: click.Context, cfg: CacheCommandConfig, verify: bool):
        """Cache aligned residual activations of both models on a corpus slice (HDF5, resumable)."""
        if verify:
            ctx.exit(verify_command(cfg))
        from .. import dist
        from ..progress import quiet_loaders

        quiet_loaders(cfg.progress)  # --no-progress silences the model loaders' bars too

        rank, world = dist.init_from_env(cfg.device)  # under torchrun: one process group, shards split by rank
        prefix = f"[rank {rank}/{world}] " if world > 1 else ""
        path = run_cache(cfg, log=lambda m: click.echo(prefix + m, err=True))
        if rank != 0:
            return
        from .reader import open_cache

        with open_cache(path) as c:
            ra, rb = c.alignment_rate
            click.echo(f"{path}: {c.n_tokens:,} aligned tokens from {len(c.doc_index):,} documents; "
                       f"alignment rate {ra:.1%} ({c.source_model}) / {rb:.1%} ({c.target_model})")
