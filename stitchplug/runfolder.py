"""The run folder: one layout, owned by the core, and the only way anything writes into it.

Layout (every command defaults to these paths)::

    RUN/config.yaml                    resolved config of the last `stitchplug run`
    RUN/cache.h5 (+ cache.h5.shards/)  paired activation cache          RunFolder.cache
    RUN/stitch/stitch.safetensors      the stitch (+ .json sidecar)      RunFolder.stitch
    RUN/artifacts/<kind>/<role>/       one artifact (roles: source, transferred, random, or a kind's own)
    RUN/stages/<stage>.json            finished-stage markers
    RUN/metrics.json                   sections, written only through add_metrics
    RUN/report/<name>.md               report sections, written only through add_report_section
    RUN/report.md                      assembled from the sections on every add_report_section
    RUN/*.png                          plots referenced by report sections (RunFolder.plot)

Stages finish atomically, each with a marker ``stages/<name>.json``; a changed config is refused and a
stale stage redone (:mod:`stitchplug.stages`, whose :class:`~stitchplug.stages.StageMarkers` is
:class:`RunFolder`'s base). One process writes into a run folder at a time (:meth:`RunFolder.writing`); under
torchrun that is rank 0, which decides each stage (:meth:`reuse`) and writes its marker (:meth:`finish`)
while the other ranks write only their cache shards (see :mod:`stitchplug.run.pipeline`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from .atomic import write_json_atomic, write_text_atomic
from .errors import StageError
from .stages import StageMarkers, _flatten, with_file_inputs  # noqa: F401  (re-exported: importable from here)

CACHE_FILE = "cache.h5"
STITCH_FILE = "stitch/stitch.safetensors"
ROLES = ("source", "transferred", "random")
"""Roles every artifact kind has (``random`` only when the kind supports a baseline)."""

METRICS_ADVICE = ("repair it by hand (other commands' sections are in it), or move it away to start a new one; "
                  "nothing was written")

# report section order: core header first, artifact kinds next, other plugins after, stage times last
ORDER_CORE, ORDER_ARTIFACT, ORDER_PLUGIN, ORDER_LAST = 0, 10, 50, 100


class RunFolder(StageMarkers):
    """Named paths of a run folder, its stages (:class:`~stitchplug.stages.StageMarkers`), and the writers
    for metrics and report sections."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def existing(cls, root: str | Path) -> "RunFolder":
        """Open a folder written by ``stitchplug run``; one-line StageError if it is not one."""
        rf = cls(root)
        if not rf.root.is_dir():
            raise StageError(f"run folder {rf.root} does not exist (run `stitchplug run --output-dir {rf.root}` first)")
        if not (rf.root / "stages").is_dir() and not rf.cache.exists():
            raise StageError(f"{rf.root} is not a stitchplug run folder (no stages/ and no {CACHE_FILE})")
        return rf

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    # -- named paths -----------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def cache(self) -> Path:
        """The paired activation cache (HDF5 entry file)."""
        return self.root / CACHE_FILE

    @property
    def stitch(self) -> Path:
        """The stitch's safetensors file (its sidecar is ``stitch.safetensors.json``)."""
        return self.root / STITCH_FILE

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report_file(self) -> Path:
        return self.root / "report.md"

    def artifact(self, kind: str, role: str) -> Path:
        """Folder of artifact ``kind`` in ``role`` (``source``, ``transferred``, ``random`` or a kind's own)."""
        for part, what in ((kind, "kind"), (role, "role")):
            if not part or "/" in part or part.startswith("."):
                raise StageError(f"invalid artifact {what} name {part!r}")
        return self.root / "artifacts" / kind / role

    def plot(self, name: str) -> Path:
        """Where a report section's plot goes (reference it in Markdown as ``![](name)``)."""
        return self.root / name

    def marker(self, name: str) -> Path:
        return self.root / "stages" / f"{name}.json"

    # -- reading what earlier stages left --------------------------------------------------
    def config(self) -> dict:
        """The resolved config snapshot (``config.yaml``) as a dict."""
        import yaml

        self.require("run", "config.yaml")
        data = self.read(self.config_file, lambda t: yaml.safe_load(t) or {},
                         "restore it, or delete it and re-run `stitchplug run` with the same flags")
        if not isinstance(data, dict):
            raise StageError(f"{self.config_file} does not hold a mapping; restore it, or delete it and re-run "
                             "`stitchplug run` with the same flags")
        return data

    def open_cache(self, **kwargs):
        """:func:`stitchplug.cache.reader.open_cache` on this folder's cache."""
        from .cache.reader import open_cache

        self.require("cache", CACHE_FILE)
        return open_cache(self.cache, **kwargs)

    def load_stitch(self, expect: dict | None = None):
        """The folder's :class:`~stitchplug.stitch.model.Stitch` (``expect``: sidecar fields that must match)."""
        from .stitch.model import Stitch

        self.require("stitch", STITCH_FILE)
        return Stitch.load(self.stitch, expect=expect)

    def load_artifact(self, kind: str, role: str):
        """Load artifact ``kind``/``role`` with the registered kind's ``load``."""
        from .plugins import registry

        self.require(f"{kind}.{role}", self.artifact(kind, role).relative_to(self.root))
        return registry().get("artifacts", kind).factory().load(self.artifact(kind, role))

    def load_model(self, side: str, device: str | None = None):
        """The model adapter of ``side`` (``source`` = A, ``target`` = B) named in ``config.yaml``."""
        from .adapter import load_model

        cfg = self.config()
        models = cfg.get("models", {})
        if side not in ("source", "target") or not models.get(side):
            raise StageError(f"{self.config_file} names no {side!r} model")
        return load_model(models[side], device=device or cfg.get("device", "cpu"), dtype=cfg.get("dtype", "float32"),
                          cache_dir=models.get("cache_dir"))

    def metrics(self) -> dict:
        """``metrics.json`` as a dict (empty if there is none yet)."""
        if not self.metrics_file.exists():
            return {}
        data = self.read(self.metrics_file, json.loads, METRICS_ADVICE)
        if not isinstance(data, dict):
            raise StageError(f"{self.metrics_file} does not hold a JSON object; {METRICS_ADVICE}")
        return data

    def read(self, path: Path, parse: Callable[[str], Any], advice: str) -> Any:
        """``parse(path's text)``; a file that cannot be read or parsed is one StageError line naming it and
        ``advice``. Nothing in the folder is ever rewritten from a file this refused."""
        try:
            return parse(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            why = f"is not UTF-8 text (byte {exc.start})"
        except OSError as exc:
            why = f"cannot be read ({exc.strerror or type(exc).__name__})"
        except Exception as exc:  # json, yaml: a parse error
            why = f"does not parse ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        raise StageError(f"{path} {why}; {advice}") from None

    def check_readable(self) -> None:
        """Refuse, before anything is written, if a file the folder's writers rewrite or read back
        (``metrics.json``, ``config.yaml``, the report index, a stage marker) cannot be read: it is named
        in one line with what to do, and left as it is."""
        self.metrics()
        if self.config_file.exists():
            self.config()
        self._report_index()
        for marker in sorted((self.root / "stages").glob("*.json")):
            self._record(marker.stem)

    # -- the only writers of metrics.json and report.md -----------------------------------
    def add_metrics(self, section: str, data: dict) -> None:
        """Set ``metrics.json[section] = data`` (atomically; other sections are kept)."""
        metrics = self.metrics()  # an unreadable metrics.json is refused, never restarted from {}
        metrics[section] = data
        write_json_atomic(self.metrics_file, metrics)

    def add_report_section(self, name: str, markdown: str, order: int = ORDER_PLUGIN) -> Path:
        """Add or replace report section ``name`` and re-assemble ``report.md``; returns its path.

        Sections are sorted by ``order`` (core 0, artifact kinds 10, other plugins 50, stage times
        100), then by name; a section keeps the order it was first added with.
        """
        if not name or "/" in name or name.startswith("."):
            raise StageError(f"invalid report section name {name!r}")
        index_path = self.root / "report" / "index.json"
        index = self._report_index()
        index.setdefault(name, order)
        write_text_atomic(self.root / "report" / f"{name}.md", markdown.rstrip() + "\n")
        write_json_atomic(index_path, index)
        return self.render_report()

    def _report_index(self) -> dict:
        index_path = self.root / "report" / "index.json"
        if not index_path.exists():
            return {}
        index = self.read(index_path, json.loads, "restore it, or delete it (report.md is then re-assembled "
                                                  "from the sections added after that)")
        if not isinstance(index, dict):
            raise StageError(f"{index_path} does not hold a JSON object; restore it or delete it")
        return index

    def report_sections(self) -> list[str]:
        index = self._report_index()
        return [n for n, _ in sorted(index.items(), key=lambda kv: (kv[1], kv[0]))
                if (self.root / "report" / f"{n}.md").exists()]

    def render_report(self) -> Path:
        parts = [(self.root / "report" / f"{n}.md").read_text().rstrip() for n in self.report_sections()]
        write_text_atomic(self.report_file, "\n\n".join(parts) + "\n")
        return self.report_file

    # -- one writer at a time ---------------------------------------------------------------
    @contextmanager
    def writing(self, what: str = "stitchplug"):
        """Hold the run folder's lock (``RUN/.lock``) while writing; a second writer is refused in one line."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise StageError(f"run folder {self.root} is in use by {holder}; wait for it to finish or use "
                             "another --output-dir") from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{what} (pid {os.getpid()})")
            fh.flush()
            yield self
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def require(self, name: str, *files: str | Path) -> None:
        """Refuse with one line when a stage's files are missing (e.g. deleted by hand)."""
        for f in files:
            p = self.root / f
            if not p.exists():
                raise StageError(f"stage '{name}' is marked finished but {p} is missing; delete {self.marker(name)} "
                                 "to redo it" if self.marker(name).exists() else
                                 f"{p} is missing (stage '{name}' of `stitchplug run --output-dir {self.root}` writes it)")


def lock_run_folder(root: str | Path, what: str = "stitchplug"):
    """Hold ``RUN/.lock`` for a command that writes into (or reads a consistent state of) run folder
    ``root``: ``with lock_run_folder(run, "stitchplug analyze"): ...``. A second writer is refused in
    one line naming the holder. The run folder must exist (a typo is not made into a folder)."""
    rf = RunFolder(root)
    if not rf.root.is_dir():
        raise StageError(f"run folder {rf.root} does not exist (run `stitchplug run --output-dir {rf.root}` first)")
    return rf.writing(what)


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]
