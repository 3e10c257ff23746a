"""Checks that need no model: run before a run folder is created or any model loads.

Each failure is one :class:`~stitchplug.errors.StitchplugError` line naming the problem, so a typo in a
model, corpus or artifact name, a missing corpus file or an absent GPU never leaves a half-made run
folder behind (or costs a model load first).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, StitchplugError


def check_corpus(corpus: str) -> None:
    """A registered name, an existing ``file:``, a ``hub:`` name, or a ``mix:`` of those."""
    from ..cache.corpus import MIX_PREFIX, parse_mix
    from ..plugins import registry

    if corpus.startswith(MIX_PREFIX):
        for part, _ in parse_mix(corpus):
            check_corpus(part)
    elif corpus.startswith("file:"):
        path = Path(corpus[len("file:"):])
        if not path.is_file():
            raise StitchplugError(f"corpus file {path} does not exist (cache.corpus {corpus!r})")
    elif not corpus.startswith("hub:"):
        registry().get("corpora", corpus)


def check_names(cfg) -> None:
    """Model, artifact and corpus names resolve; a ``file:`` corpus exists; the device exists."""
    from ..plugins import registry

    reg = registry()
    reg.get("models", cfg.models.source)
    reg.get("models", cfg.models.target)
    reg.get("artifacts", cfg.artifact)
    check_corpus(cfg.cache.corpus)
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but torch sees no CUDA GPU here; use --device cpu")
