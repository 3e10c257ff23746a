"""First-party evaluators for SAEs: reconstruction, Delta loss, CE recovered, dead latents, frequencies.

Public API: the classes in :mod:`stitchplug_evals.evaluators` (registered under their ``name``),
:func:`stitchplug_evals.evaluators.evaluate_all`, :func:`stitchplug_evals.loss.spliced_losses`,
:func:`stitchplug_evals.loss.ce_loss_score`, :func:`stitchplug_evals.stats.sae_activation_stats`.
"""

from stitchplug.api import hookimpl, lazy_factory

_DESCRIPTIONS = {
    "reconstruction": "L0, MSE, FVU (all / excluding massive dims / per-dim), cosine on held-out activations",
    "dead_latents": "share of latents that never fire on held-out tokens",
    "latent_frequency": "per-latent firing frequency on held-out tokens",
    "delta_loss": "CE with the reconstruction spliced in minus clean CE",
    "ce_recovered": "SAELens CE-loss-recovered score against zero ablation",
}


@hookimpl
def register_evaluators(register):
    for name, desc in _DESCRIPTIONS.items():
        register(name, lazy_factory("stitchplug_evals.evaluators", "EVALUATORS", name),
                 description=desc, source="stitchplug (first party)")
