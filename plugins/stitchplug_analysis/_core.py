"""Every name this plugin takes from the stitchplug core, in one place; all through ``stitchplug.api``."""

from stitchplug.api import (  # noqa: F401
    ArtifactContext,
    Encoded,
    Evaluator,
    RunFolder,
    StageError,
    StitchplugError,
    first_window,
    folded_unembed,
    heldout_documents,
    lock_run_folder,
)
