"""Everything this plugin takes from the stitchplug core, in one place.

Keeping the core imports here means the plugin follows the core's public API in one edit.
"""

from stitchplug.artifacts import ArtifactContext, ArtifactKind, Evaluator  # noqa: F401
from stitchplug.errors import ConfigError, StageError, StitchplugError  # noqa: F401
from stitchplug.hookspecs import hookimpl  # noqa: F401
from stitchplug.cache.corpus import open_corpus  # noqa: F401
