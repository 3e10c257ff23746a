"""Kept so that imports written before issue 9 still work: the one TopK SAE trainer is
:mod:`stitchplug_sae.trainer` (``train_topk_sae``, ``rebatch``)."""

from .trainer import rebatch, train_topk_sae  # noqa: F401
