"""``stitchplug cache``: build (or resume) the paired activation cache for a model pair."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click
from pydantic import BaseModel, ConfigDict

from ..config import CacheConfig, ModelsConfig


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
    seed: int = 0
    """Seed of the stored default train/eval document split."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Device for the models."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype of the models (the storage dtype is cache.dtype)."""
    aligner: str = "auto"
    """Token aligner: auto (identity for one tokenizer, end-offsets otherwise) or a registered name."""
    progress: bool = True
    """Show a progress bar."""
    shard_rows: int | None = None
    """Aligned tokens per shard file (None: about 64 MiB per shard). Part of the cache's identity."""
    models: ModelsConfig = ModelsConfig()
    cache: CacheConfig = CacheConfig()


def run_cache(cfg: CacheCommandConfig, log=None) -> Path:
    """Load both models and build the cache described by ``cfg`` (see :func:`build_cache`)."""
    from ..adapter import load_model
    from .corpus import open_corpus
    from .writer import build_cache, check_existing

    out = Path(cfg.output) if cfg.output else Path(cfg.output_dir) / "cache.h5"
    # A foreign or corrupt file at the output path is reported before any model is loaded.
    check_existing(out, {"source_model": cfg.models.source, "target_model": cfg.models.target,
                         "corpus": cfg.cache.corpus})
    open_corpus(cfg.cache.corpus, limit=0)  # so is an unknown corpus or an unreachable hub
    source = load_model(cfg.models.source, device=cfg.device, dtype=cfg.dtype, cache_dir=cfg.models.cache_dir)
    target = load_model(cfg.models.target, device=cfg.device, dtype=cfg.dtype, cache_dir=cfg.models.cache_dir)
    c = cfg.cache
    return build_cache(out, source, target, corpus=c.corpus, doc_start=c.doc_start, max_docs=c.max_docs,
                       tokens=c.tokens, context_size=c.context_size, source_layers=c.source_layers,
                       target_layers=c.target_layers, dtype=c.dtype, batch_size=c.batch_size,
                       aligner=cfg.aligner, eval_fraction=c.eval_fraction, split_seed=cfg.seed,
                       progress=cfg.progress, shard_rows=cfg.shard_rows, log=log)


def register(cli: click.Group) -> None:
    from ..cli import config_options

    @cli.command("cache")
    @config_options(CacheCommandConfig, with_preset=False)
    def cache_cmd(cfg: CacheCommandConfig):
        """Cache aligned residual activations of both models on a corpus slice (HDF5, resumable)."""
        path = run_cache(cfg, log=lambda m: click.echo(m, err=True))
        from .reader import open_cache

        with open_cache(path) as c:
            ra, rb = c.alignment_rate
            click.echo(f"{path}: {c.n_tokens:,} aligned tokens from {len(c.doc_index):,} documents; "
                       f"alignment rate {ra:.1%} ({c.source_model}) / {rb:.1%} ({c.target_model})")
