"""Run the steering experiment on a finished run folder (its stitch and models), without the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .config import SteeringConfig
from .runfolder import steering_dir, stitch_file


def run_in_folder(run: str | Path, cfg: SteeringConfig, seed: int = 0, device: str = "cpu",
                  log: Callable[[str], None] = print, models: dict | None = None,
                  out: str | Path | None = None) -> dict:
    """Steering on ``run``'s stitch into ``out`` (default ``RUN/steering``); ``models`` may hold
    already-loaded adapters by name."""
    from ._core import Stitch, load_model

    from .report import report_section
    from .steering_run import run_steering

    stitch = Stitch.load(stitch_file(run))
    m = stitch.meta
    massive = m.get("massive_dims", {}) or {}
    models = dict(models or {})
    for name in (m["source_model"], m["target_model"]):
        if name not in models:
            log(f"loading {name}")
            models[name] = load_model(name, device=device)
    sides = {"A": (models[m["source_model"]], int(m["source_layer"]), massive.get("source", [])),
             "B": (models[m["target_model"]], int(m["target_layer"]), massive.get("target", []))}
    folder = Path(out) if out is not None else steering_dir(run)
    res = run_steering(sides, stitch, cfg, folder, seed=seed, log=log)
    (folder / "report.md").write_text(report_section(res, folder) + "\n", encoding="utf-8")
    return res
