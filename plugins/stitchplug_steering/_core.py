"""Everything this plugin takes from the stitchplug core, in one place.

Keeping the core imports here means the plugin follows the core's public API in one edit.
(``__init__`` imports only ``hookimpl``, so listing plugins stays cheap.)
"""

from stitchplug.adapter import load_model  # noqa: F401
from stitchplug.artifacts import ArtifactContext, ArtifactKind, Evaluator  # noqa: F401
from stitchplug.cache.corpus import open_corpus  # noqa: F401
from stitchplug.errors import ConfigError, StageError, StitchplugError  # noqa: F401
from stitchplug.stitch.model import Stitch  # noqa: F401
