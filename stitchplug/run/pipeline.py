"""The staged pipeline behind ``stitchplug run``.

Stages (each reused when finished with the same config, see :mod:`stitchplug.runfolder`):

``cache``           paired activations of A and B on the corpus slice (resumable HDF5)
``stitch``          SVCCA layer choice (unless given), fit, held-out reconstruction metrics
``stitch_ce``       stitched next-token losses (paper Table 1) on held-out documents
``<kind>.source``   the source artifact on A (trained or loaded)
``<kind>.transfer`` the artifact carried to B through the stitch
``<kind>.baseline`` a random artifact of the same shape on B (kinds with ``supports_baseline``)
``<kind>.evaluate`` every registered evaluator that applies, on every arm (``Evaluator.evaluate_arms``),
                    the step across arms (``aggregate``) and the kind's diagnostics
then ``metrics.json`` sections and ``report.md`` sections through :class:`~stitchplug.runfolder.RunFolder`.

A kind that builds on other kinds (``requires = ("sae",)``) gets their ``source``, ``transfer``,
``baseline`` (and, when it asks, ``native``) stages first, under their own names and config sections
(:mod:`stitchplug.run.kinds`), and their artifacts in ``context.inputs[kind][role]``.

Stages of different artifact kinds have different names and folders (``artifacts/<kind>/<role>``),
so ``--artifact sae`` and ``--artifact probe`` runs can share one run folder (cache and stitch).

Under ``torchrun --nproc-per-node N -m stitchplug run`` every rank runs :meth:`Pipeline.run`; the
stages run in this order, the distributed ones first:

- rank 0 alone takes the run folder's lock, checks the config against finished stages and writes
  ``config.yaml``; its verdict (or its one-line error) is broadcast (:func:`stitchplug.dist.on_main`);
- ``cache`` (each rank writes its own shards, rank 0 the entry file), ``stitch`` (data-parallel fit,
  rank 0 saves) and, for kinds with ``data_parallel`` (the SAE), ``<kind>.source`` (each rank trains
  on its share of every global batch, rank 0 saves) run on every rank; for each, rank 0 decides
  whether it is reused and writes its marker, and every rank follows that decision;
- then the other ranks leave (nothing of theirs is waited on again, so nothing can deadlock), and
  rank 0 alone, as a world of one (:func:`stitchplug.dist.solo`), runs the rest: ``stitch_ce``,
  the other kinds' ``source``, ``transfer``, ``baseline``, ``evaluate``, ``metrics.json`` and
  ``report.md``.

In one process the same code runs the same stages in the same order.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

from .. import dist
from ..artifacts import ArtifactKind, Arm, Evaluator
from ..config import RunConfig, check_values, run_config_class, run_config_dict, snapshot
from ..errors import PluginError, StageError
from ..plugins import registry
from ..runfolder import CACHE_FILE, ORDER_ARTIFACT, ORDER_CORE, ORDER_LAST, STITCH_FILE, RunFolder
from .kinds import KindStages
from .resources import RunResources

LABELS = {"source": "source_on_A", "transferred": "transferred_on_B", "random": "random_on_B"}


def artifact_kind(name: str) -> ArtifactKind:
    """The registered artifact kind ``name`` (one-line PluginError if it is not an ArtifactKind)."""
    entry = registry().get("artifacts", name)
    kind = entry.factory()
    if not isinstance(kind, ArtifactKind):
        raise PluginError(f"artifact {name!r} of plugin {entry.plugin!r} does not implement "
                          "stitchplug.api.ArtifactKind")
    return kind


def evaluate_arms(evaluators: list, arms: dict[str, Arm], log: Callable[[str], None]) -> dict[str, dict]:
    """``{arm: {evaluator name: result}}``: each evaluator sees every arm at once
    (``Evaluator.evaluate_arms``); one that only has ``evaluate()`` (duck-typed, not an
    :class:`Evaluator`) is judged arm by arm. An evaluator that returns other arms than it was given
    is a :class:`PluginError` naming it."""
    out: dict[str, dict] = {label: {} for label in arms}
    for ev in evaluators:
        many = getattr(ev, "evaluate_arms", None) or (lambda arms, log, ev=ev: Evaluator.evaluate_arms(ev, arms, log))
        got = many(arms, log=log)
        if not isinstance(got, dict) or set(got) != set(arms):
            shown = sorted(got) if isinstance(got, dict) else type(got).__name__
            raise PluginError(f"evaluator {ev.name!r} returned arms {shown}, not the run's {sorted(arms)}")
        for label in arms:
            out[label][ev.name] = got[label]
    return out


class Pipeline(RunResources):
    """One run: the run folder, its stages and the order they run in (what they work on, the lazily
    loaded models, cache and contexts, is :class:`~stitchplug.run.resources.RunResources`)."""

    def __init__(self, cfg: RunConfig, log: Callable[[str], None] = print, progress: bool = True):
        self.cfg = cfg
        self.log = log
        self.progress = progress
        self.rf = RunFolder(cfg.output_dir)
        self._models: dict[str, Any] = {}
        self._cache = None
        self._eval_windows = None
        self._contexts = None
        self.kind = artifact_kind(cfg.artifact)
        self.required = {}
        for req in self.kind.requires:
            if req == cfg.artifact or req in self.required:
                raise PluginError(f"artifact kind {cfg.artifact!r} requires {req!r} twice or itself")
            rkind = self.required[req] = artifact_kind(req)
            if rkind.requires:
                raise PluginError(f"artifact kind {cfg.artifact!r} requires {req!r}, which requires "
                                  f"{', '.join(rkind.requires)}: kinds build on one level of kinds")
        if self.required and self.kind.data_parallel:
            raise PluginError(f"artifact kind {cfg.artifact!r} is data_parallel and requires other kinds; "
                              "only a kind without requirements may train on every rank")
        missing = {n: k.config_class for n, k in [(cfg.artifact, self.kind), *self.required.items()]
                   if k.config_class is not None and n not in type(cfg).model_fields}
        if missing:  # built without the kinds' sections
            self.cfg = run_config_class(missing).model_validate(cfg.model_dump() | {n: {} for n in missing})
        self.art_cfg = self.section(cfg.artifact, self.kind)
        self.stitch_meta: dict = {}
        self._layers: tuple[int, int] | None = None

    def section(self, name: str, kind: ArtifactKind):
        """The validated config section of kind ``name`` (None for a kind without one)."""
        return getattr(self.cfg, name) if kind.config_class is not None else None

    def kind_stages(self) -> list[KindStages]:
        """The artifact stages of the required kinds (in order), then of the run's own kind."""
        name, own = self.cfg.artifact, tuple(self.required)
        out = [KindStages(self, req, k, self.section(req, k), self.kind.required_roles(self.art_cfg))
               for req, k in self.required.items()]
        roles = ("source", "transferred", "random")
        return out + [KindStages(self, name, self.kind, self.art_cfg, roles, needs=own)]

    def layers(self) -> tuple[int, int]:
        """``(A's layer, B's layer)`` of the stitch (known once the stitch stage is done)."""
        if self._layers is None:
            raise StageError("the stitch layers are not known before the stitch stage")
        return self._layers

    def deps(self, *sections: str) -> dict:
        """The config ``sections`` (and the core's) a stage depends on; a field marked ``added_later``
        is left out while at its default, so folders written before it existed resume."""
        data = self.cfg.model_dump(mode="json")
        for how in ("queue_depth", "host_workers"):  # how the cache is written, not what: never part of a stage's identity
            data["cache"].pop(how, None)
        for name, value in data.items():
            section = getattr(self.cfg, name, None)
            if isinstance(value, dict) and hasattr(type(section), "model_fields"):
                for field, info in type(section).model_fields.items():
                    if (info.json_schema_extra or {}).get("added_later") and value.get(field) == info.default:
                        value.pop(field, None)
        keep = {"seed", "device", "dtype", "models", "cache"} | set(sections)
        return {k: v for k, v in data.items() if k in keep}

    # -- the whole run ---------------------------------------------------------------------
    def stage_deps(self) -> dict[str, dict]:
        """Every stage of this run and the config it depends on (checked before anything runs)."""
        stages = {"cache": self.deps(), "stitch": self.deps("stitch"), "stitch_ce": self.deps("stitch", "eval")}
        kinds = self.kind_stages()
        for ks in kinds:
            stages |= ks.stage_deps()
        stages[f"{self.cfg.artifact}.evaluate"] = kinds[-1].deps
        return stages

    def stage_outputs(self) -> dict[str, dict]:
        """What each stage writes (fingerprinted in its marker)."""
        outs = {"cache": {"cache": self.rf.cache}, "stitch": {"stitch": self.rf.stitch}}
        for ks in self.kind_stages():
            outs |= ks.stage_outputs()
        return outs

    def run(self) -> dict:
        """Run (or resume) every stage; returns ``metrics.json`` (``{}`` on ranks other than 0)."""
        rank, world = dist.init_from_env(self.cfg.device)
        if rank != 0:
            base = self.log
            self.log, self.progress = (lambda m: base(f"[rank {rank}/{world}] {m}")), False
        with contextlib.ExitStack() as held:
            def open_folder() -> None:
                held.enter_context(self.rf.writing("stitchplug run"))  # one writer per run folder
                # before config.yaml is touched: a changed config, or an output replaced behind its marker
                self.rf.check_readable()  # an unreadable metrics.json, marker, config: refused, never rewritten
                self.rf.check(self.stage_deps())
                for stage, outputs in self.stage_outputs().items():
                    self.rf.stale(stage, outputs=outputs)
                (self.rf.root / "stages").mkdir(parents=True, exist_ok=True)
                snapshot(self.cfg, self.rf.config_file, tuple(self.required))

            def preflight() -> None:  # before the run folder exists or any stage writes
                from .preflight import check_input_files, check_lengths

                check_values(self.cfg)  # a config built in Python, not through build_config
                check_input_files(self.cfg)  # every file: input exists and is non-empty text
                self.kind.preflight(self.art_cfg)  # the kind's own inputs (task files: columns, classes)
                for req, rkind in self.required.items():  # and those of the kinds it builds on
                    rkind.preflight(self.section(req, rkind))
                self.kind.check_required(self.art_cfg, {r: self.section(r, k) for r, k in self.required.items()})
                check_lengths(self.cfg, [self.model("source"), self.model("target")])  # against n_ctx

            dist.on_main(preflight)
            dist.on_main(open_folder)  # rank 0's error ends every rank
            return self._run()

    def stage(self, name: str, deps: dict, fn: Callable[[], Any], inputs: dict | None = None,
              outputs: dict | None = None, commit: Callable[[Any], dict] | None = None) -> dict:
        """:meth:`RunFolder.run` for a stage every rank takes part in: rank 0 decides whether it is
        reused and every rank follows; every rank runs ``fn``; rank 0 runs ``commit(fn())`` (saving
        what ``fn`` built; default: ``fn()`` is the result) and writes the marker. Rank 0's result is
        returned on every rank. In one process (or in ``dist.solo``) this is :meth:`RunFolder.run`."""
        rf = self.rf
        rec = dist.on_main(lambda: rf.reuse(name, deps, self.log, inputs, outputs))
        if rec is not None:
            return rec
        if dist.is_main():
            self.log(f"[{name}] running")
        t0 = time.perf_counter()
        value = fn()
        return dist.on_main(lambda: rf.finish(name, deps, (commit(value) if commit else value) or {},
                                              time.perf_counter() - t0, self.log, inputs, outputs))

    def _run(self) -> dict:
        cfg, rf = self.cfg, self.rf
        from ..cache.corpus import corpus_files

        corpus = corpus_files(cfg.cache.corpus)  # a file: corpus, or a mix:'s file components
        outputs = self.stage_outputs()
        cache_res = self.stage("cache", self.deps(), self.stage_cache, inputs=corpus, outputs=outputs["cache"])
        dist.on_main(lambda: rf.require("cache", CACHE_FILE))
        stitch_res = self.stage("stitch", self.deps("stitch"), self.stage_stitch, inputs={"cache": rf.cache},
                                outputs=outputs["stitch"])
        meta = self.stitch_meta = stitch_res["meta"]
        lA, lB = self._layers = int(meta["source_layer"]), int(meta["target_layer"])
        massive = stitch_res["recon"]["massive_dims"]

        def contexts():  # built when first needed (a reused source stage needs none on ranks other than 0)
            if self._contexts is None:
                stitch = self.load_stitch(meta)
                ctx_a = self.context("source", lA, massive["source"], stitch)
                ctx_b = self.context("target", lB, massive["target"], stitch)
                ctx_a.other, ctx_b.other = ctx_b, ctx_a
                self._contexts = stitch, ctx_a, ctx_b
            return self._contexts

        def source_stage(ks: KindStages) -> None:
            # every rank builds its contexts before any trains: a failure there ends all ranks, not one
            def obtain():
                ctx_a = ks.contexts(*dist.on_all(contexts)[1:])[0]
                return ks.kind.obtain(ctx_a, ks.cfg)

            self.stage(ks.stage("source"), ks.deps, obtain, inputs={"cache": rf.cache},
                       outputs=outputs[ks.stage("source")], commit=ks.save_source)

        kinds = self.kind_stages()
        # data-parallel sources on every rank (a kind with requirements is never data-parallel)
        for ks in kinds:
            if ks.kind.data_parallel:
                source_stage(ks)
        if not dist.is_main():
            self.log("distributed stages done; rank 0 finishes the run")
            return {}
        with dist.solo():  # the other ranks have left: rank 0 is a world of one
            for ks in kinds[:-1]:  # the required kinds' artifacts, handed to the run's kind by role
                if not ks.kind.data_parallel:
                    source_stage(ks)
                stitch, ctx_a, ctx_b = contexts()
                ctx_a.inputs[ks.name] = ctx_b.inputs[ks.name] = ks.after_source(stitch, ctx_a, ctx_b)
            if not kinds[-1].kind.data_parallel:
                source_stage(kinds[-1])
            return self._finish(cache_res, stitch_res, contexts, kinds[-1])

    def _finish(self, cache_res: dict, stitch_res: dict, contexts, ks: KindStages) -> dict:
        """Rank 0 alone: the stages after the artifact's source, metrics.json and report.md."""
        cfg, rf, kind, name = self.cfg, self.rf, self.kind, self.cfg.artifact
        stitch, ctx_a, ctx_b = contexts()
        ce_res = rf.run("stitch_ce", self.deps("stitch", "eval"), lambda: self.stage_stitch_ce(stitch), self.log,
                        inputs={"stitch": rf.stitch})
        arts = ks.after_source(stitch, ctx_a, ctx_b)
        arms = {LABELS[role]: Arm(arts[role], ctx_a if role == "source" else ctx_b) for role in ks.roles}
        src_art, tgt_art = arts["source"], arts["transferred"]

        def evaluate():
            all_arms = dict(arms)
            for label, arm in kind.extra_arms(src_art, tgt_art, ctx_a, ctx_b).items():
                if label in all_arms or label in ("diagnostics", "aggregate"):
                    raise StageError(f"artifact kind {name!r} adds an arm named {label!r}, which is taken")
                all_arms[label] = arm
            out = evaluate_arms(self.evaluators(), all_arms, self.log)
            agg = kind.aggregate(out, self.art_cfg)  # the step across arms
            if agg is not None:
                out["aggregate"] = agg
            diag = kind.diagnose(src_art, tgt_art, stitch, ctx_b, ctx_a)
            if diag is not None:
                out["diagnostics"] = diag
            return out

        arm_inputs = {role: ks.paths[role] for role in ks.roles}
        eval_res = rf.run(f"{name}.evaluate", ks.deps, evaluate, self.log,
                          inputs=arm_inputs | {"stitch": rf.stitch, "cache": rf.cache})
        rf.drop_stale_results(self.log)  # analyze / experiment init results built on what this run redid
        for section, data in (("config", run_config_dict(cfg, tuple(self.required))), ("cache", cache_res),
                              ("stitch", stitch_res), ("stitched_ce", ce_res), (name, eval_res),
                              ("stage_seconds", rf.stage_seconds())):
            rf.add_metrics(section, data)
        metrics = rf.metrics()
        from .report import core_markdown, stage_times_markdown

        rf.add_report_section("run", core_markdown(metrics, rf), ORDER_CORE)
        section = kind.report_markdown(metrics, rf)
        if section is not None:
            rf.add_report_section(name, section, ORDER_ARTIFACT)
        path = rf.add_report_section("stage_times", stage_times_markdown(metrics), ORDER_LAST)
        self.log(f"report: {path}")
        return metrics


def run(cfg: RunConfig, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Run (or resume) the whole pipeline for ``cfg``; returns the run folder's ``metrics.json``."""
    return Pipeline(cfg, log=log, progress=progress).run()


def fit_run_folder(output_dir: str, preset: str | None = None, overrides: dict | None = None,
                   artifact: str = "steering", log: Callable[[str], None] = print,
                   progress: bool = False, models: dict | None = None) -> dict:
    """Only the ``cache`` and ``stitch`` stages of ``stitchplug run`` in ``output_dir`` (same deps,
    markers and config snapshot, so a later ``stitchplug run --artifact ARTIFACT`` there reuses them).
    ``overrides`` are dotted config keys (``{"cache.corpus": "mix:..."}``). Returns
    ``{"config", "cache", "stitch"}`` (the stages' results). ``models`` (``{name: adapter}``) is
    shared with the caller: adapters in it are used, and the ones this call loads are added."""
    from ..config import artifact_sections, build_config
    from .preflight import check_names

    sections, presets = artifact_sections()
    cfg = build_config(preset=preset, overrides={"artifact": artifact, "output_dir": str(output_dir),
                                                 **(overrides or {})},
                       cls=run_config_class(sections), section_presets=presets)
    check_names(cfg)
    pipe = Pipeline(cfg, log=log, progress=progress)
    if models is not None:
        pipe._models = models
    rf = pipe.rf
    with rf.writing("stitchplug fit_run_folder"):
        deps = {"cache": pipe.deps(), "stitch": pipe.deps("stitch")}
        rf.check(deps)
        outputs = pipe.stage_outputs()
        for stage in deps:
            rf.stale(stage, outputs=outputs[stage])
        (rf.root / "stages").mkdir(parents=True, exist_ok=True)
        if not rf.config_file.exists():
            snapshot(pipe.cfg, rf.config_file)
        from ..cache.corpus import corpus_files

        corpus = corpus_files(cfg.cache.corpus)
        cache_res = rf.run("cache", deps["cache"], pipe.stage_cache, log, inputs=corpus, outputs=outputs["cache"])
        rf.require("cache", CACHE_FILE)
        stitch_res = rf.run("stitch", deps["stitch"], pipe.stage_stitch, log, inputs={"cache": rf.cache},
                            outputs=outputs["stitch"])
        rf.require("stitch", STITCH_FILE)
    if pipe._cache is not None:
        pipe._cache.close()
    return {"config": run_config_dict(pipe.cfg), "cache": cache_res, "stitch": stitch_res}
