"""Labelled examples (text, label, document id) from corpus documents or a CSV/JSONL file.

What a probing task trains on: ``examples_from_documents(context.documents("train"), "topic")``
keeps the cache's document split; ``examples_from_file("tasks/sentiment.csv")`` reads a labelled file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable

from .artifacts import Example
from .errors import ConfigError


def examples_from_documents(docs: Iterable[dict], label_field: str, text_field: str = "text",
                            limit: int | None = None) -> list[Example]:
    """One :class:`Example` per document that has a non-empty ``label_field``."""
    out: list[Example] = []
    for doc in docs:
        label = doc.get(label_field)
        if label is None or label == "":
            continue
        out.append(Example(str(doc[text_field]), label, doc.get("doc_id")))
        if limit is not None and len(out) >= limit:
            break
    return out


def examples_from_file(path: str | Path, text_field: str = "text", label_field: str = "label",
                       id_field: str = "doc_id") -> list[Example]:
    """Read a ``.csv`` (header row) or ``.jsonl`` file of labelled texts; one-line ConfigError on a
    missing file, an unknown extension or a row without the text/label field (naming the row)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"labelled example file not found: {path}")
    try:
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        elif path.suffix in (".jsonl", ".ndjson"):
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            raise ConfigError(f"labelled example file {path} must end in .csv or .jsonl")
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse labelled example file {path}: {str(exc).splitlines()[0]}") from None
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or text_field not in row or label_field not in row:
            raise ConfigError(f"{path} row {i + 1} lacks the {text_field!r} or {label_field!r} field")
        out.append(Example(str(row[text_field]), row[label_field], row.get(id_field, i)))
    return out
