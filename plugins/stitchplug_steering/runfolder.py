"""Where the steering plugin finds things in a run folder (kept in one place).

``stitchplug run --artifact steering`` keeps the statistics in ``artifacts/steering/stats`` and its
config in ``config.yaml``'s ``steering`` section; :func:`~.standalone.run_in_folder` writes
everything under ``steering/``. Both layouts are read.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ._core import StageError
from .config import SteeringConfig

STEERING_DIR = "steering"
STATS_DIR = "artifacts/steering/stats"
STITCH_FILE = "stitch/stitch.safetensors"


def steering_dir(run: str | Path) -> Path:
    return Path(run) / STEERING_DIR


def stats_dir(run: str | Path) -> Path:
    """The folder holding ``stats_A``/``stats_B`` (pipeline layout first)."""
    for folder in (Path(run) / STATS_DIR, steering_dir(run)):
        if (folder / "stats_A.json").exists() and (folder / "stats_B.json").exists():
            return folder
    raise StageError(f"run folder {run} has no steering statistics; run "
                     f"`stitchplug run --artifact steering --output-dir {run}` first")


def stitch_file(run: str | Path) -> Path:
    path = Path(run) / STITCH_FILE
    if not path.exists():
        raise StageError(f"run folder {run} has no stitch ({path})")
    return path


def steering_config(run: str | Path) -> SteeringConfig:
    """The steering config the run used (``config.yaml``'s section, else ``steering/steering.json``),
    else the defaults."""
    run = Path(run)
    try:
        snap = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
        if isinstance(snap, dict) and isinstance(snap.get("steering"), dict):
            return SteeringConfig.model_validate(snap["steering"])
        path = steering_dir(run) / "steering.json"
        if path.exists():
            return SteeringConfig.model_validate(json.loads(path.read_text()).get("config", {}))
    except (yaml.YAMLError, json.JSONDecodeError, ValueError):
        raise StageError(f"the steering config in {run} is unreadable; re-run the steering stage") from None
    return SteeringConfig()
