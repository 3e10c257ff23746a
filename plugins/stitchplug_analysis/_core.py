"""Every name this plugin takes from the stitchplug core, in one place (the seam with the core)."""

from stitchplug.adapter import Encoded, load_model  # noqa: F401
from stitchplug.artifacts import ArtifactContext, Evaluator  # noqa: F401
from stitchplug.cache.corpus import open_corpus  # noqa: F401
from stitchplug.cache.reader import open_cache  # noqa: F401
from stitchplug.config import build_config  # noqa: F401
from stitchplug.errors import StageError, StitchplugError  # noqa: F401
from stitchplug.hookspecs import hookimpl  # noqa: F401
from stitchplug.run.stages import write_json_atomic, write_text_atomic  # noqa: F401
from stitchplug.stitch.model import Stitch  # noqa: F401
from stitchplug.stitch.stitched_ce import windows_for_texts  # noqa: F401
