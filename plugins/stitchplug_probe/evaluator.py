"""The ``probe_accuracy`` evaluator: a probe set's test accuracy, Wilson interval and AUC per task and k
on the model of the arm's context.

:meth:`ProbeAccuracy.evaluate` judges one arm; :meth:`ProbeAccuracy.evaluate_arms` (what the pipeline
calls) judges every arm of a run with one pass per model over each task's test examples. Each probe
set names its arm (``artifact["arm"]``, a key of :data:`~stitchplug_probe.arms.ARMS`), which says the
features its probes read; the SAEs come from the ``sae`` kind through ``context.inputs["sae"]``.
"""

from __future__ import annotations

from typing import Any, Callable

from stitchplug.api import Arm, ArtifactContext, Evaluator, StageError

from .arms import ARMS


def _settings(ctx: ArtifactContext):
    from .config import ProbeConfig
    from .experiment import settings_from

    if not isinstance(ctx.config, ProbeConfig):
        raise StageError("probe_accuracy needs the probe kind's config section in the arm's context")
    return ctx.config, settings_from(ctx.config, ctx)


def sides(contexts: list[ArtifactContext]) -> tuple[ArtifactContext, ArtifactContext]:
    """``(A's context, B's context)`` from the arms' contexts (each links the other as ``other``)."""
    by = {}
    for ctx in contexts:
        by.setdefault(ctx.side, ctx)
        if ctx.other is not None:
            by.setdefault(ctx.other.side, ctx.other)
    if "source" not in by or "target" not in by:
        raise StageError("probe_accuracy needs both models' contexts (an arm's context.other)")
    return by["source"], by["target"]


class ProbeAccuracy(Evaluator):
    name = "probe_accuracy"
    applies_to = {"probe"}

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        return self.evaluate_arms({"arm": Arm(artifact, context)})["arm"]

    def evaluate_arms(self, arms: dict[str, Arm], log: Callable[[str], None] | None = None) -> dict[str, dict]:
        from .experiment import score_arms
        from .saes import resolve

        for label, arm in arms.items():
            name = arm.artifact.get("arm") if isinstance(arm.artifact, dict) else None
            if name not in ARMS:
                raise StageError(f"arm {label!r} is not a probe set of a known arm ({name!r}; "
                                 f"known: {', '.join(ARMS)})")
            want = "source" if ARMS[name].side == "A" else "target"
            if arm.context.side != want:
                raise StageError(f"arm {label!r} holds {name!r} probes, which read model "
                                 f"{ARMS[name].side}, but its context is the {arm.context.side} model's")
        ctx_a, ctx_b = sides([arm.context for arm in arms.values()])
        cfg, s = _settings(ctx_a)
        saes, _ = resolve(ctx_a, ctx_b, cfg, log=log or (lambda m: None))
        by_name = {arm.artifact["arm"]: arm.artifact for arm in arms.values()}
        res = score_arms(ctx_a.adapter, ctx_a.layer, ctx_b.adapter, ctx_b.layer, by_name, saes, ctx_a.stitch, s,
                         progress=ctx_a.progress)
        return {label: res[arm.artifact["arm"]] for label, arm in arms.items()}
