"""First-party model adapters: the two offline default models, TransformerLens hub names, tiny test models."""

from stitchplug.hookspecs import hookimpl


@hookimpl
def register_models(register):
    pass
