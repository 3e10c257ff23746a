"""Errors that the CLI turns into a one-line message and a non-zero exit code."""


class StitchplugError(Exception):
    """A problem the user can fix; the CLI prints ``str(err)`` on one line and exits 1."""

    exit_code = 1


class ConfigError(StitchplugError):
    """An invalid configuration or flag (exit code 2)."""

    exit_code = 2


class PluginError(StitchplugError):
    """A plugin failed to load or registered a clashing name."""


class ModelLoadError(StitchplugError):
    """A model could not be loaded (unknown name, missing offline package, unreachable hub)."""


class CacheError(StitchplugError):
    """An activation cache is corrupt, foreign, or does not match the requested configuration."""


class StageError(StitchplugError):
    """A run stage's input is missing or does not fit (wrong widths, wrong models)."""
