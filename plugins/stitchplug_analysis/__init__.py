"""Feature-level analysis of a transferred SAE (method.md §6, paper §5), as a plugin.

- evaluators ``feature_transferability`` (Eq. 10), ``semantic_structural``, ``entropy_features``,
  ``attention_deactivation`` (:mod:`stitchplug_analysis.evaluators`; run by ``stitchplug analyze``);
- the command ``stitchplug analyze --run RUN [--what ...] [--budget quick|full]``
  (:mod:`stitchplug_analysis.cli`), which writes the ``feature_analysis`` section of the run's
  ``metrics.json`` and ``report.md``;
- sentence augmenters (:mod:`stitchplug_analysis.augment`, entry-point group ``stitchplug.augmenters``).
"""

from stitchplug.api import hookimpl, lazy_factory

_DESCRIPTIONS = {
    "feature_transferability": "per-latent Pearson r of f*logit on A vs B over aligned held-out tokens (Eq. 10)",
    "semantic_structural": "latents firing on all content-word rewrites of a sentence (structural) or some (semantic)",
    "entropy_features": "decoder-row share in the unembedding's bottom-2% singular subspace; entropy when ablated",
    "attention_deactivation": "drop in later heads' attention to the first token when a latent is path-patched out",
}


@hookimpl
def register_evaluators(register):
    for name, desc in _DESCRIPTIONS.items():
        register(name, lazy_factory("stitchplug_analysis.evaluators", "EVALUATORS", name),
                 description=desc + " (stitchplug analyze)", source="stitchplug (first party)")


@hookimpl
def register_commands(cli):
    from .cli import register

    register(cli)
