"""Everything this plugin takes from the stitchplug core, in one place: the public API module.

(``__init__`` imports only ``hookimpl``, so listing plugins stays cheap.)
"""

from stitchplug.api import (Arm, ArtifactContext, ArtifactKind, ConfigError, Evaluator,  # noqa: F401
                            ReconAccumulator, RunFolder, StageError, Stitch, StitchplugError, fit_run_folder,
                            load_model, open_corpus, parse_mix, windows_for_texts, write_json_atomic,
                            write_text_atomic)
