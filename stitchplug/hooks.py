"""The one place the residual-stream hook-name format lives (``blocks.{l}.hook_resid_pre``).

Layer ``l`` is the residual stream *before* block ``l``, as TransformerLens numbers blocks.
"""

from __future__ import annotations

import re

_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")


def resid_hook(layer: int) -> str:
    """TransformerLens hook name of the residual stream before block ``layer``."""
    return f"blocks.{int(layer)}.hook_resid_pre"


def hook_layer(hook: str | None) -> int | None:
    """The layer of a ``blocks.{l}.hook_resid_pre`` name, or None for any other hook (or None)."""
    m = _RESID_PRE.match(hook or "")
    return int(m.group(1)) if m else None
