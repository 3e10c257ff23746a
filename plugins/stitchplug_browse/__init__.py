"""A cross-model feature browser for a run folder, as a plugin.

``stitchplug browse --run RUN`` streams held-out documents through both models once each, keeps the
top-activating contexts of every latent of the source SAE (on A) and of the transferred SAE (on B),
and writes a static, offline site plus its data into ``RUN/browse/`` (see docs/browse.md):
:mod:`~stitchplug_browse.stream` (the resumable passes), :mod:`~stitchplug_browse.tables` (logit
tables, neighbours, the index), :mod:`~stitchplug_browse.site` (JSON data and pages),
:mod:`~stitchplug_browse.vectors` (probes and steering vectors), :mod:`~stitchplug_browse.export`
(the Neuronpedia bulk-import layout).
"""

from stitchplug.api import hookimpl


@hookimpl
def register_commands(cli):
    from .cli import register

    register(cli)
