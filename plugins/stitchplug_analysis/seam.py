"""The only place this plugin writes into a run folder: metrics sections and report sections.

Until the core's public run-folder API lands (issue 10), this uses the current run-folder helpers:
``metrics.json`` gets (or updates) one top-level key per section; ``report.md`` gets the section
between ``<!-- name -->`` markers (replaced on a re-run), and the same Markdown is kept as
``<name>_experiment.md`` so a later ``stitchplug run`` that rewrites ``report.md`` splices it back in.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._core import StageError
from ._core import write_json_atomic, write_text_atomic


def add_metrics(run: str | Path, section: str, data: dict, merge: bool = True) -> None:
    """Set ``metrics.json[section]`` (merging into an existing dict section when ``merge``)."""
    path = Path(run) / "metrics.json"
    metrics: dict = {}
    if path.exists():
        try:
            metrics = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise StageError(f"{path} is not valid JSON ({exc}); refusing to overwrite it") from None
    old = metrics.get(section)
    metrics[section] = {**old, **data} if merge and isinstance(old, dict) else data
    write_json_atomic(path, metrics)


def add_report_section(run: str | Path, name: str, markdown: str) -> Path:
    """Insert or replace the section ``name`` of ``report.md``; keep it as ``<name>_experiment.md``."""
    run = Path(run)
    write_text_atomic(run / f"{name}_experiment.md", markdown.rstrip() + "\n")
    begin, end = f"<!-- {name}_experiment -->", f"<!-- /{name}_experiment -->"
    report = run / "report.md"
    text = report.read_text() if report.exists() else ""
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    write_text_atomic(report, text)
    return report
