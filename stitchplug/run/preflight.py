"""Checks that need no model: run before a run folder is created or any model loads.

Each failure is one :class:`~stitchplug.errors.StitchplugError` line naming the problem, so a typo in a
model, corpus or artifact name, a missing corpus file or an absent GPU never leaves a half-made run
folder behind (or costs a model load first).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, StitchplugError

TEXT_SNIFF = 1 << 16
"""Bytes of an input file read to tell text from binary."""


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
    check_input_files(cfg)
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but torch sees no CUDA GPU here; use --device cpu")


def check_lengths(cfg, models) -> None:
    """Every config field marked as a context length (cache and probe context sizes, steering's
    max_new_tokens and vector_tokens, ...) fits the loaded models' context size (n_ctx): one line
    naming the field and the model, before any stage writes. ``models`` are the loaded adapters."""
    from ..config import context_lengths

    limits = [(m.n_ctx, m.name) for m in models if getattr(m, "n_ctx", None)]
    if not limits:
        return
    n_ctx, name = min(limits)
    section = {"cache", cfg.artifact}
    for field, value in context_lengths(cfg).items():
        if field.split(".")[0] in section and value > n_ctx:
            raise ConfigError(f"invalid config: {field}: {value} tokens is more than model {name!r} reads "
                              f"(context size n_ctx = {n_ctx}); use at most {n_ctx}")


def check_input_files(cfg) -> None:
    """Every ``file:PATH`` the run config names (corpora, probe tasks, steering prompts, in any field)
    exists, is a file, is UTF-8 text and is not empty: checked before the run folder is created, not at
    the stage that reads it (whose marker would otherwise record the bad path)."""
    from ..config import run_config_dict
    from ..fingerprints import file_inputs

    data = run_config_dict(cfg) if hasattr(cfg, "artifact") else cfg.model_dump(mode="json")
    for path in file_inputs(data):
        what = f"input file {path} (file:{path} in the config)"
        if not path.is_file():
            raise StitchplugError(f"{what} does not exist" if not path.exists() else f"{what} is not a file")
        try:
            with open(path, "rb") as fh:
                head = fh.read(TEXT_SNIFF)
        except OSError as exc:
            raise StitchplugError(f"{what} cannot be read ({exc.strerror})") from None
        if not head.strip():
            raise StitchplugError(f"{what} is empty")
        if b"\0" in head:
            raise StitchplugError(f"{what} is not text (it holds NUL bytes)")
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # not just a character cut at the sniff boundary
                raise StitchplugError(f"{what} is not UTF-8 text (byte {exc.start})") from None
