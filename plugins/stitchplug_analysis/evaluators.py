"""The analysis parts as registered evaluators (``evaluate(artifact, context) -> dict``).

They are run by ``stitchplug analyze`` (minutes each on the default pair), not by ``stitchplug run``:
``applies_to`` is empty so the run's evaluate stage skips them, and ``analyzes = {"sae"}`` names what
they read. Each takes held-out windows from ``context.eval_windows``. Inputs beyond the context come
from ``context.memo["analysis"]`` (a dict), else from the run:

- ``feature_transferability``: artifact = the transferred SAE on B (``context``); the source side is
  ``context.other`` (A's context); ``source_artifact`` (default: the run folder's source SAE),
  ``paired_windows`` (``(enc_a, enc_b, idx_a, idx_b)``; default: built from ``documents("eval")``),
  optional ``random_artifact``.
- ``semantic_structural``: ``sentences`` (dicts with text/topic) and ``augmenter``.
- all: ``max_windows``, ``top`` (entropy), ``candidates`` (attention), ``n_versions`` (semantic).
"""

from __future__ import annotations

from typing import Any

import torch

from ._core import ArtifactContext, Encoded, Evaluator, StageError

from .common import capture, paired_captures, paired_windows, unembed_path


def context_captures(context: ArtifactContext, limit: int | None = None) -> list:
    context.need("adapter", "layer", "eval_windows", who="feature analysis")
    special = context.adapter.special_ids
    out = []
    windows = context.eval_windows
    windows = list(windows) if not isinstance(windows, torch.Tensor) else list(windows.reshape(-1, windows.shape[-1]))
    for ids in windows[:limit]:
        ids = torch.as_tensor(ids).long().reshape(-1)
        spec = torch.isin(ids, torch.tensor(sorted(special), dtype=torch.long)) if special else torch.zeros_like(ids, dtype=torch.bool)
        ends = torch.where(spec, -1, torch.arange(len(ids)))
        out.append(capture(context.adapter, Encoded(ids, ends, spec), context.layer))
    return out


def _opts(context: ArtifactContext) -> dict:
    return context.memo.get("analysis", {})


def _extra(context: ArtifactContext, key: str) -> Any:
    if key not in _opts(context):
        raise StageError(f"this evaluator needs context.memo['analysis'][{key!r}] (run it through `stitchplug analyze`)")
    return _opts(context)[key]


class _Analysis(Evaluator):
    applies_to: set[str] = set()
    analyzes = {"sae"}


class TransferabilityEvaluator(_Analysis):
    name = "feature_transferability"

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        from .transferability import transferability

        ctx_a, opts = context.other, _opts(context)
        if ctx_a is None:
            raise StageError("feature transferability needs the source model's context (context.other)")
        src = opts.get("source_artifact")
        if src is None:
            if context.folder is None:
                raise StageError("feature transferability needs memo['analysis']['source_artifact'] or a run folder")
            src = context.folder.load_artifact("sae", "source")
        wins = opts.get("paired_windows")
        if wins is None:
            context.need("documents", who="feature transferability")
            texts = [d["text"] for _, d in zip(range(int(opts.get("max_windows", 24))), context.documents("eval"))]
            wins = paired_windows(texts, ctx_a.adapter, context.adapter, int(opts.get("context_size", 128)),
                                  aligner=opts.get("aligner", "auto"))
        pc = paired_captures(ctx_a.adapter, context.adapter, wins, ctx_a.layer, context.layer)
        return transferability(src, artifact, pc, unembed_path(ctx_a.adapter), unembed_path(context.adapter),
                               opts.get("random_artifact"))


class SemanticEvaluator(_Analysis):
    name = "semantic_structural"

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        from .semantic import classify

        context.need("adapter", "layer", who="semantic/structural split")
        return classify(context.adapter, artifact, context.layer, _extra(context, "sentences"),
                        _extra(context, "augmenter"), n_versions=int(_opts(context).get("n_versions", 5)),
                        seed=context.seed)


class EntropyEvaluator(_Analysis):
    name = "entropy_features"

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        from .entropy import entropy_features

        caps = context_captures(context, _opts(context).get("max_windows"))
        return entropy_features(artifact, context.adapter, context.layer, caps, unembed_path(context.adapter),
                                top=int(_opts(context).get("top", 8)))


class AttentionEvaluator(_Analysis):
    name = "attention_deactivation"

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        import numpy as np

        from .attention import bos_attention_effects, rank_features
        from .entropy import activation_stats

        caps = context_captures(context, _opts(context).get("max_windows"))
        freq = activation_stats(artifact, caps)["frequency"]
        n = int(_opts(context).get("candidates", 16))
        cands = [int(i) for i in np.argsort(-freq)[:n] if freq[i] > 0]
        return {"ranking": rank_features(bos_attention_effects(context.adapter, artifact, context.layer, caps, cands))}


EVALUATORS = (TransferabilityEvaluator, SemanticEvaluator, EntropyEvaluator, AttentionEvaluator)
