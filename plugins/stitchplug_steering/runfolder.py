"""Where the steering plugin finds things in a run folder (kept in one place)."""

from __future__ import annotations

import json
from pathlib import Path

from ._core import StageError
from .config import SteeringConfig

STEERING_DIR = "steering"
STITCH_FILE = "stitch/stitch.safetensors"


def steering_dir(run: str | Path) -> Path:
    return Path(run) / STEERING_DIR


def stitch_file(run: str | Path) -> Path:
    path = Path(run) / STITCH_FILE
    if not path.exists():
        raise StageError(f"run folder {run} has no stitch ({path})")
    return path


def steering_config(run: str | Path) -> SteeringConfig:
    """The steering config the run used (from ``steering/steering.json``), else the defaults."""
    path = steering_dir(run) / "steering.json"
    if path.exists():
        try:
            return SteeringConfig.model_validate(json.loads(path.read_text()).get("config", {}))
        except (json.JSONDecodeError, ValueError):
            raise StageError(f"{path} is unreadable; re-run the steering stage") from None
    return SteeringConfig()
