"""The stages of a run folder: finished-stage markers, reuse, staleness, and the results other commands record.

Stages finish atomically: a stage writes its outputs, then a marker ``stages/<name>.json`` holding the
config it depends on and content fingerprints of the inputs it consumed and the outputs it wrote
(:mod:`stitchplug.fingerprints`). Only a marker makes a stage finished: an interrupted stage has no
marker and is redone. Re-running with a different config for a finished stage is refused, naming what
changed, rather than overwriting results already written; a stage whose inputs or outputs changed since
(a refit stitch, an edited corpus file, a file replaced by hand) is stale and is redone, and so is every
stage after it.

:class:`StageMarkers` is the part of :class:`~stitchplug.runfolder.RunFolder` that keeps them; it uses the
folder's ``root``, ``marker()``, ``read()`` and its metrics and report writers, and is not used on its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from . import interrupt
from .atomic import write_json_atomic
from .errors import StageError


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class StageMarkers:
    """The stage methods of :class:`~stitchplug.runfolder.RunFolder` (its base class)."""

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
        interrupt.check()
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
        interrupt.check()  # an interrupt swallowed during the stage never marks it finished
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


def with_file_inputs(deps: dict, inputs: dict[str, str | Path] | None) -> dict[str, Path]:
    """``inputs`` plus every ``file:PATH`` named anywhere in the stage's config ``deps`` (corpora, probe
    task files, steering prompt files, a ``mix:`` corpus's files ...), labelled ``file:PATH``: a stage's
    fingerprint covers the content of every file it reads, so editing one makes the stage stale."""
    from .fingerprints import file_inputs

    out = {k: Path(v) for k, v in (inputs or {}).items()}
    for path in file_inputs(deps):
        out.setdefault(f"file:{path}", path)
    return out
