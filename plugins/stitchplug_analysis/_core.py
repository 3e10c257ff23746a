"""Every name this plugin takes from the stitchplug core, in one place; all through ``stitchplug.api``."""

from stitchplug.api import (  # noqa: F401
    ArtifactContext,
    Encoded,
    Evaluator,
    RunFolder,
    StageError,
    StitchplugError,
    align_by_end_offsets,
    align_identity,
    lock_run_folder,
    open_corpus,
)
