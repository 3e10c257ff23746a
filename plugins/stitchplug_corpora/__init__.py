"""First-party corpora: offline Wikipedia (en/fr/es), local files, hub datasets."""

from stitchplug.hookspecs import hookimpl


@hookimpl
def register_corpora(register):
    pass
