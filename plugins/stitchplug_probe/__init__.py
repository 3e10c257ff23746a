"""First-party probe artifact: sparse (SAE-latent) and dense linear probes transferred A -> B.

Public API: :class:`stitchplug_probe.artifact.ProbeArtifact` (registered as artifact ``probe``),
:class:`stitchplug_probe.evaluator.ProbeAccuracy` (evaluator ``probe_accuracy``),
:func:`stitchplug_probe.tasks.load_task`, :func:`stitchplug_probe.experiment.run_probes`,
:mod:`stitchplug_probe.probes` (fit, top_k, through_affine).
"""

from stitchplug.api import hookimpl


def _factory():
    from .artifact import ProbeArtifact

    return ProbeArtifact()


@hookimpl
def register_artifacts(register):
    register("probe", _factory,
             description="Linear probes on SAE latents (top-k by mean difference) and on the residual, "
                         "transferred with and without retraining",
             source="stitchplug (first party)")


def _evaluator():
    from .evaluator import ProbeAccuracy

    return ProbeAccuracy()


@hookimpl
def register_evaluators(register):
    register("probe_accuracy", _evaluator,
             description="test accuracy (Wilson interval) and AUC of every probe arm per task and k, "
                         "one pass per model over the test examples",
             source="stitchplug (first party)")
