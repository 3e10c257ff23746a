"""First-party SAE artifact: train or load a source SAE, transfer it through a stitch (Eq. 6)."""

from stitchplug.hookspecs import hookimpl


@hookimpl
def register_artifacts(register):
    pass
