"""First-party evaluators for SAEs: reconstruction, Delta loss, dead latents."""

from stitchplug.hookspecs import hookimpl


@hookimpl
def register_evaluators(register):
    pass
