"""Run folders made of stages that finish atomically and are reused on re-runs.

A stage writes its outputs, then a marker ``stages/<name>.json`` holding a fingerprint of the config
it depends on. Only a marker makes a stage finished: an interrupted stage has no marker and is redone.
Re-running with a different config for a finished stage is refused, naming what changed, rather than
overwriting results already written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import StageError


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """:func:`write_text_atomic` of ``data`` as indented JSON."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass
class RunFolder:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        (self.root / "stages").mkdir(parents=True, exist_ok=True)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def marker(self, name: str) -> Path:
        return self.root / "stages" / f"{name}.json"

    def done(self, name: str, deps: dict) -> dict | None:
        """The stage's recorded result if it finished with the same ``deps``; refuse if they differ."""
        marker = self.marker(name)
        if not marker.exists():
            return None
        try:
            rec = json.loads(marker.read_text())
        except json.JSONDecodeError:
            return None  # a marker is written atomically; an unreadable one means it never finished
        old, new = _flatten(rec.get("deps", {})), _flatten(json.loads(json.dumps(deps, default=str)))
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            shown = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in changed[:4])
            raise StageError(
                f"run folder {self.root} finished stage '{name}' with a different config: {shown}; "
                f"use another --output-dir or delete {marker} to redo it"
            )
        return rec.get("result", {})

    def run(self, name: str, deps: dict, fn: Callable[[], dict], log: Callable[[str], None] = print) -> dict:
        """Run ``fn`` unless the stage already finished with the same deps; record its result."""
        rec = self.done(name, deps)
        if rec is not None:
            log(f"[{name}] reused (finished earlier)")
            return rec
        log(f"[{name}] running")
        t0 = time.perf_counter()
        result = fn() or {}
        seconds = time.perf_counter() - t0
        write_json_atomic(self.marker(name), {"deps": deps, "result": result, "seconds": seconds,
                                              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        log(f"[{name}] done in {seconds:.1f}s")
        return result

    def require(self, name: str, *files: str | Path) -> None:
        """Refuse with one line when a finished stage's files are missing (e.g. deleted by hand)."""
        for f in files:
            p = self.root / f
            if not p.exists():
                raise StageError(f"stage '{name}' is marked finished but {p} is missing; delete {self.marker(name)} to redo it")


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]
