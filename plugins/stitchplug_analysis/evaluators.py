"""The analysis parts as registered evaluators (``evaluate(artifact, context) -> dict``).

They are run by ``stitchplug analyze`` (minutes each on the default pair), not by ``stitchplug run``:
``applies_to`` is empty so the run's evaluate stage skips them, and ``analyzes = {"sae"}`` names what
they read. Each takes held-out windows from ``context.eval_windows``; the pairwise ones
(transferability, semantic split) read the other side from ``context.extras``:

- ``feature_transferability``: artifact = the transferred SAE on B (``context``);
  ``extras["source_artifact"]`` (SAE on A), ``extras["source_context"]`` (A's context),
  ``extras["paired_windows"]`` (``(enc_a, enc_b, idx_a, idx_b)`` tuples),
  optional ``extras["random_artifact"]``.
- ``semantic_structural``: ``extras["sentences"]`` (dicts with text/topic), ``extras["augmenter"]``.
"""

from __future__ import annotations

from typing import Any

import torch

from ._core import Encoded
from ._core import ArtifactContext, Evaluator
from ._core import StageError

from .common import capture, paired_captures, unembed_path


def context_captures(context: ArtifactContext, limit: int | None = None) -> list:
    context.need("adapter", "layer", "eval_windows", who="feature analysis")
    special = context.adapter.special_ids
    out = []
    for ids in list(context.eval_windows)[:limit]:
        ids = torch.as_tensor(ids).long().reshape(-1)
        spec = torch.isin(ids, torch.tensor(sorted(special), dtype=torch.long)) if special else torch.zeros_like(ids, dtype=torch.bool)
        ends = torch.where(spec, -1, torch.arange(len(ids)))
        out.append(capture(context.adapter, Encoded(ids, ends, spec), context.layer))
    return out


def _extra(context: ArtifactContext, key: str) -> Any:
    if key not in context.extras:
        raise StageError(f"this evaluator needs context.extras[{key!r}] (run it through `stitchplug analyze`)")
    return context.extras[key]


class _Analysis(Evaluator):
    applies_to: set[str] = set()
    analyzes = {"sae"}


class TransferabilityEvaluator(_Analysis):
    name = "feature_transferability"

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        from .transferability import transferability

        src, ctx_a = _extra(context, "source_artifact"), _extra(context, "source_context")
        pc = paired_captures(ctx_a.adapter, context.adapter, _extra(context, "paired_windows"), ctx_a.layer, context.layer)
        return transferability(src, artifact, pc, unembed_path(ctx_a.adapter), unembed_path(context.adapter),
                               context.extras.get("random_artifact"))


class SemanticEvaluator(_Analysis):
    name = "semantic_structural"

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        from .semantic import classify

        context.need("adapter", "layer", who="semantic/structural split")
        return classify(context.adapter, artifact, context.layer, _extra(context, "sentences"),
                        _extra(context, "augmenter"), n_versions=int(context.extras.get("n_versions", 5)),
                        seed=context.seed)


class EntropyEvaluator(_Analysis):
    name = "entropy_features"

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        from .entropy import entropy_features

        caps = context_captures(context, context.extras.get("max_windows"))
        return entropy_features(artifact, context.adapter, context.layer, caps, unembed_path(context.adapter),
                                top=int(context.extras.get("top", 8)))


class AttentionEvaluator(_Analysis):
    name = "attention_deactivation"

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        import numpy as np

        from .attention import bos_attention_effects, rank_features
        from .entropy import activation_stats

        caps = context_captures(context, context.extras.get("max_windows"))
        freq = activation_stats(artifact, caps)["frequency"]
        n = int(context.extras.get("candidates", 16))
        cands = [int(i) for i in np.argsort(-freq)[:n] if freq[i] > 0]
        return {"ranking": rank_features(bos_attention_effects(context.adapter, artifact, context.layer, caps, cands))}


EVALUATORS = (TransferabilityEvaluator, SemanticEvaluator, EntropyEvaluator, AttentionEvaluator)
