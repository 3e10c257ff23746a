"""Every name this plugin takes from the stitchplug core, in one place; all through ``stitchplug.api``."""

from stitchplug.api import (  # noqa: F401
    RunFolder,
    StageError,
    StitchplugError,
    folded_unembed,
    heldout_texts,
    progress as progress_bar,
    resid_hook,
    write_json_atomic,
    write_text_atomic,
)
