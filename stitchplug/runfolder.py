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

Stages finish atomically: a stage writes its outputs, then a marker ``stages/<name>.json`` holding the
config it depends on and content fingerprints of the inputs it consumed and the outputs it wrote
(:mod:`stitchplug.fingerprints`). Only a marker makes a stage finished: an interrupted stage has no
marker and is redone. Re-running with a different config for a finished stage is refused, naming what
changed, rather than overwriting results already written; a stage whose inputs or outputs changed since
(a refit stitch, an edited corpus file, a file replaced by hand) is stale and is redone, and so is every
stage after it. One process writes into a run folder at a time (:meth:`RunFolder.writing`); under
torchrun that is rank 0, which decides each stage (:meth:`reuse`) and writes its marker (:meth:`finish`)
while the other ranks write only their cache shards (see :mod:`stitchplug.run.pipeline`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from .atomic import write_json_atomic, write_text_atomic
from .errors import StageError

CACHE_FILE = "cache.h5"
STITCH_FILE = "stitch/stitch.safetensors"
ROLES = ("source", "transferred", "random")
"""Roles every artifact kind has (``random`` only when the kind supports a baseline)."""

METRICS_ADVICE = ("repair it by hand (other commands' sections are in it), or move it away to start a new one; "
                  "nothing was written")

# report section order: core header first, artifact kinds next, other plugins after, stage times last
ORDER_CORE, ORDER_ARTIFACT, ORDER_PLUGIN, ORDER_LAST = 0, 10, 50, 100


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class RunFolder:
    """Named paths of a run folder, its stages, and the writers for metrics and report sections."""

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

    # -- stages ----------------------------------------------------------------------------
    def _record(self, name: str) -> dict | None:
        marker = self.marker(name)
        if not marker.exists():
            return None
        # markers are written atomically: an unreadable one was damaged afterwards, and is refused
        rec = self.read(marker, json.loads, f"delete it to redo stage '{name}' (and what was built on it)")
        if not isinstance(rec, dict):
            raise StageError(f"{marker} does not hold a JSON object; delete it to redo stage '{name}'")
        return rec

    def changed_config(self, name: str, deps: dict) -> list[str]:
        """``"field (old -> new)"`` for each config field stage ``name`` finished with that ``deps`` changes."""
        rec = self._record(name)
        if rec is None:
            return []
        old, new = _flatten(rec.get("deps", {})), _flatten(json.loads(json.dumps(deps, default=str)))
        return [f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]

    def check(self, stages: dict[str, dict]) -> None:
        """Refuse, before anything runs or is written, if any finished stage of ``{name: deps}`` has a
        different config; the message names every such stage, so following it leaves a consistent folder."""
        bad = {name: self.changed_config(name, deps) for name, deps in stages.items()}
        bad = {n: c for n, c in bad.items() if c}
        if bad:
            first = next(iter(bad))
            markers = " ".join(str(self.marker(n).relative_to(self.root)) for n in bad)
            raise StageError(
                f"run folder {self.root} finished stage '{first}' with a different config: "
                f"{', '.join(bad[first][:4])}; use another --output-dir, or delete {markers} in it to redo "
                f"{'that stage' if len(bad) == 1 else f'those {len(bad)} stages'}")

    def done(self, name: str, deps: dict) -> dict | None:
        """The stage's recorded result if it finished with the same ``deps``; refuse if they differ."""
        self.check({name: deps})
        rec = self._record(name)
        return None if rec is None else rec.get("result", {})

    def stale(self, name: str, inputs: dict[str, Path] | None = None, outputs: dict[str, Path] | None = None) -> str | None:
        """Why finished stage ``name`` must be redone, or ``None``: an input whose content changed (an
        upstream stage was redone, a corpus file edited) or an output that is gone. An output that is
        still there but was replaced since (by hand, or by another tool) is refused, never overwritten."""
        from .fingerprints import content_fingerprint

        rec = self._record(name) or {}
        seen_out = rec.get("outputs") or {}
        for label, path in (outputs or {}).items():
            if label not in seen_out:
                continue  # a marker from before fingerprints were recorded: nothing to compare
            now = content_fingerprint(path)
            if now is None:
                return f"its output {label} ({path}) is missing"
            if now != seen_out[label]:
                raise StageError(f"{path} was replaced after stage '{name}' wrote it, and later results were built "
                                 f"on the original; restore it, or delete {self.marker(name).relative_to(self.root)} "
                                 "to redo that stage (and everything built on it)")
        seen_in = rec.get("inputs") or {}
        for label, path in (inputs or {}).items():
            if label in seen_in and content_fingerprint(path) != seen_in[label]:
                return f"its input {label} ({path}) changed since it finished"
        return None

    def run(self, name: str, deps: dict, fn: Callable[[], dict], log: Callable[[str], None] = print,
            inputs: dict[str, str | Path] | None = None, outputs: dict[str, str | Path] | None = None) -> dict:
        """Run ``fn`` unless the stage already finished with the same deps and unchanged inputs and
        outputs; record its result, the config and the content fingerprints."""
        rec = self.reuse(name, deps, log, inputs, outputs)
        if rec is not None:
            return rec
        log(f"[{name}] running")
        t0 = time.perf_counter()
        result = fn() or {}
        return self.finish(name, deps, result, time.perf_counter() - t0, log, inputs, outputs)

    def reuse(self, name: str, deps: dict, log: Callable[[str], None] = print,
              inputs: dict[str, str | Path] | None = None, outputs: dict[str, str | Path] | None = None) -> dict | None:
        """The first half of :meth:`run`: the recorded result of a finished, still valid stage, or
        ``None`` (a stale stage's marker is removed) when it must run. Refuses a changed config."""
        inputs = with_file_inputs(deps, inputs)
        outputs = {k: Path(v) for k, v in (outputs or {}).items()}
        rec = self.done(name, deps)
        if rec is not None:
            why = self.stale(name, inputs, outputs)
            if why is None:
                log(f"[{name}] reused (finished earlier)")
                return rec
            log(f"[{name}] stale: {why}; redoing it")
            self.marker(name).unlink()
        return None

    def finish(self, name: str, deps: dict, result: dict, seconds: float, log: Callable[[str], None] = print,
               inputs: dict[str, str | Path] | None = None, outputs: dict[str, str | Path] | None = None) -> dict:
        """The second half of :meth:`run`: write the stage's marker (its result, config, seconds and
        the fingerprints of its inputs and outputs); returns ``result``."""
        from .fingerprints import content_fingerprint

        inputs = with_file_inputs(deps, inputs)
        write_json_atomic(self.marker(name), {
            "deps": deps, "result": result, "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "inputs": {k: content_fingerprint(Path(p)) for k, p in (inputs or {}).items()},
            "outputs": {k: content_fingerprint(Path(p)) for k, p in (outputs or {}).items()}})
        log(f"[{name}] done in {seconds:.1f}s")
        return result

    def record_results(self, name: str, command: str, result: dict, seconds: float,
                       inputs: dict[str, str | Path], metrics: list[str] = (), report: list[str] = ()) -> None:
        """Mark what a command other than ``run`` (``analyze``, ``experiment init``) added to the folder
        as stage ``name``: the fingerprints of the ``inputs`` it read, and the ``metrics`` and ``report``
        sections it wrote. When a later ``run`` changes any of those inputs (a refit stitch, an SAE of
        another width), :meth:`drop_stale_results` removes the sections, so the report never describes
        artifacts that are gone; ``command`` is what re-creates them."""
        from .fingerprints import content_fingerprint

        paths = {k: Path(p) for k, p in inputs.items()}
        write_json_atomic(self.marker(name), {
            "deps": {}, "result": result, "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "inputs": {k: content_fingerprint(p) for k, p in paths.items()},
            "input_paths": {k: self._relative(p) for k, p in paths.items()},  # a copied folder stays itself
            "sections": {"metrics": list(metrics), "report": list(report)}, "command": command})

    def _relative(self, path: Path) -> str:
        """``path`` relative to the run folder when it is inside it, else absolute."""
        path, root = path.resolve(), self.root.resolve()
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    def drop_stale_results(self, log: Callable[[str], None] = print) -> list[str]:
        """Remove the sections of every :meth:`record_results` stage whose inputs changed (or are
        gone), and its marker; returns the names of the stages dropped."""
        from .fingerprints import content_fingerprint

        dropped = []
        for marker in sorted((self.root / "stages").glob("*.json")):
            rec = self._record(marker.stem) or {}
            if not rec.get("sections"):
                continue
            seen, paths = rec.get("inputs") or {}, rec.get("input_paths") or {}
            changed = [k for k, p in paths.items() if content_fingerprint(self.root / p) != seen.get(k)]
            if not changed:
                continue
            secs = rec["sections"]
            metrics = self.metrics()
            if any(s in metrics for s in secs.get("metrics", ())):
                write_json_atomic(self.metrics_file, {k: v for k, v in metrics.items() if k not in secs["metrics"]})
            index = self._report_index()
            if any(s in index for s in secs.get("report", ())):
                for s in secs["report"]:
                    (self.root / "report" / f"{s}.md").unlink(missing_ok=True)
                write_json_atomic(self.root / "report" / "index.json",
                                  {k: v for k, v in index.items() if k not in secs["report"]})
                self.render_report()
            marker.unlink()
            dropped.append(marker.stem)
            log(f"[{marker.stem}] stale: its input {', '.join(changed)} changed; its results were removed "
                f"(re-run `{rec.get('command') or marker.stem}` to recompute them)")
        return dropped

    def stage_seconds(self) -> dict:
        out = {}
        for marker in sorted((self.root / "stages").glob("*.json")):
            out[marker.stem] = (self._record(marker.stem) or {}).get("seconds")
        return out

    def require(self, name: str, *files: str | Path) -> None:
        """Refuse with one line when a stage's files are missing (e.g. deleted by hand)."""
        for f in files:
            p = self.root / f
            if not p.exists():
                raise StageError(f"stage '{name}' is marked finished but {p} is missing; delete {self.marker(name)} "
                                 "to redo it" if self.marker(name).exists() else
                                 f"{p} is missing (stage '{name}' of `stitchplug run --output-dir {self.root}` writes it)")


def with_file_inputs(deps: dict, inputs: dict[str, str | Path] | None) -> dict[str, Path]:
    """``inputs`` plus every ``file:PATH`` named anywhere in the stage's config ``deps`` (corpora, probe
    task files, steering prompt files, a ``mix:`` corpus's files ...), labelled ``file:PATH``: a stage's
    fingerprint covers the content of every file it reads, so editing one makes the stage stale."""
    from .fingerprints import file_inputs

    out = {k: Path(v) for k, v in (inputs or {}).items()}
    for path in file_inputs(deps):
        out.setdefault(f"file:{path}", path)
    return out


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
