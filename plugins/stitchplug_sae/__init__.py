"""First-party SAE artifact: train or load a source SAE, transfer it through a stitch (Eq. 6).

Public API (for the run pipeline and other plugins):

- :class:`stitchplug_sae.artifact.SAEArtifact` (registered as artifact ``sae``)
- :func:`stitchplug.api.train_topk_sae` (the one TopK trainer), :mod:`stitchplug.sae.step_flops`
- :func:`stitchplug.sae.transfer.transfer_sae`, :func:`~stitchplug.sae.transfer.check_compatible`,
  :func:`~stitchplug.sae.transfer.random_sae_like`, :func:`~stitchplug.sae.transfer.canonical_weights`
- :func:`stitchplug.sae.io.save_sae`, :func:`~stitchplug.sae.io.load_sae`,
  :func:`~stitchplug.sae.io.load_sae_folder`, :func:`~stitchplug.sae.io.read_sidecar`
"""

from stitchplug.api import hookimpl


def _factory():
    from .artifact import SAEArtifact

    return SAEArtifact()


@hookimpl
def register_artifacts(register):
    register("sae", _factory,
             description="Sparse autoencoder (TopK/ReLU/JumpReLU, SAELens format), transferred by Eq. 6",
             source="stitchplug (first party)")
