"""The staged pipeline behind ``stitchplug run``.

Stages (each reused when finished with the same config, see :mod:`stitchplug.runfolder`):

``cache``           paired activations of A and B on the corpus slice (resumable HDF5)
``stitch``          SVCCA layer choice (unless given), fit, held-out reconstruction metrics
``stitch_ce``       stitched next-token losses (paper Table 1) on held-out documents
``<kind>.source``   the source artifact on A (trained or loaded)
``<kind>.transfer`` the artifact carried to B through the stitch
``<kind>.baseline`` a random artifact of the same shape on B (kinds with ``supports_baseline``)
``<kind>.evaluate`` every registered evaluator that applies, on every arm, and the kind's diagnostics
then ``metrics.json`` sections and ``report.md`` sections through :class:`~stitchplug.runfolder.RunFolder`.

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
import itertools
import time
from typing import Any, Callable

from .. import dist
from ..artifacts import ArtifactContext, ArtifactKind, Arm
from ..config import RunConfig, check_values, run_config_class, run_config_dict, snapshot
from ..errors import PluginError, StageError
from ..plugins import registry
from ..runfolder import CACHE_FILE, ORDER_ARTIFACT, ORDER_CORE, ORDER_LAST, STITCH_FILE, RunFolder

LABELS = {"source": "source_on_A", "transferred": "transferred_on_B", "random": "random_on_B"}


def artifact_kind(name: str) -> ArtifactKind:
    """The registered artifact kind ``name`` (one-line PluginError if it is not an ArtifactKind)."""
    entry = registry().get("artifacts", name)
    kind = entry.factory()
    if not isinstance(kind, ArtifactKind):
        raise PluginError(f"artifact {name!r} of plugin {entry.plugin!r} does not implement "
                          "stitchplug.api.ArtifactKind")
    return kind


class Pipeline:
    """One run: lazily loaded models, the run folder and the stage functions."""

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
        cls = self.kind.config_class
        if cls is not None and cfg.artifact not in type(cfg).model_fields:  # built without the kind's section
            self.cfg = run_config_class({cfg.artifact: cls}).model_validate(cfg.model_dump() | {cfg.artifact: {}})
        self.art_cfg = getattr(self.cfg, cfg.artifact) if cls is not None else None

    # -- shared resources ------------------------------------------------------------------
    def model(self, side: str):
        name = getattr(self.cfg.models, side)
        if name not in self._models:
            from ..adapter import load_model

            self.log(f"loading {name}")
            self._models[name] = load_model(name, device=self.cfg.device, dtype=self.cfg.dtype,
                                            cache_dir=self.cfg.models.cache_dir)
        return self._models[name]

    def cache(self):
        if self._cache is None:
            from ..cache.reader import open_cache

            self._cache = open_cache(self.rf.cache, eval_fraction=self.cfg.cache.eval_fraction,
                                     split_seed=self.cfg.seed)
        return self._cache

    def deps(self, *sections: str) -> dict:
        data = run_config_dict(self.cfg)
        data["cache"].pop("queue_depth", None)  # how the cache is written, not what: never part of a stage's identity
        keep = {"seed", "device", "dtype", "models", "cache"} | set(sections)
        return {k: v for k, v in data.items() if k in keep}

    # -- stages ----------------------------------------------------------------------------
    def stage_cache(self) -> dict:
        from ..cache.select import cache_stage

        return cache_stage(self.cfg, self.rf.cache, self.model, progress=self.progress, log=self.log)

    def stage_stitch(self) -> dict:
        from ..stitch.api import train

        res = train(self.cache(), self.cfg.stitch, self.rf.stitch, seed=self.cfg.seed,
                    progress=self.progress, device=self.cfg.device)
        res.pop("stitch", None)
        res["fit"].pop("history", None)
        return res

    def load_stitch(self, meta: dict):
        expect = {k: meta[k] for k in ("source_model", "target_model", "source_layer", "target_layer",
                                       "d_source", "d_target") if meta.get(k) is not None}
        return self.rf.load_stitch(expect=expect)

    def heldout_windows(self):
        if self._eval_windows is None:
            from ..stitch.api import heldout_texts
            from ..stitch.stitched_ce import windows_for_texts

            texts = heldout_texts(self.cfg.cache, self.cache(), self.cfg.eval.docs)
            wins = windows_for_texts(texts, self.model("source"), self.model("target"), self.cfg.cache.context_size)
            self._eval_windows = wins[: self.cfg.eval.max_windows]
            if not self._eval_windows:
                raise StageError("no held-out documents left after the cached slice to evaluate losses on")
        return self._eval_windows

    def stage_stitch_ce(self, stitch) -> dict:
        from ..stitch.stitched_ce import stitched_ce

        m = stitch.meta
        return stitched_ce(self.model("source"), self.model("target"), stitch, int(m["source_layer"]),
                           int(m["target_layer"]), self.heldout_windows())

    def documents(self, split: str):
        """Corpus documents (all fields) of the cache's ``split`` ("train" or "eval"), in corpus order."""
        from ..cache.corpus import open_corpus

        if split not in ("train", "eval"):
            raise StageError(f"documents(split) takes 'train' or 'eval', not {split!r}")
        cache = self.cache()
        index = [int(i) for i in cache.doc_index]
        if not index:
            return iter(())
        held = {int(i) for i in cache.eval_docs()}
        keep = {i for i in index if (i in held) == (split == "eval")}
        first = min(index)
        docs = open_corpus(self.cfg.cache.corpus, start=first, limit=max(index) - first + 1)
        return (d for i, d in zip(itertools.count(first), docs) if i in keep)

    def context(self, side: str, layer: int, massive: list[int], stitch=None) -> ArtifactContext:
        cache, key = self.cache(), (side, layer)
        seed = self.cfg.seed

        def train_acts(batch_size: int = 1024, seed: int = seed):
            # several ranks only in a data-parallel kind's obtain (rank 0 runs every other stage in dist.solo):
            # this rank's rows of each global batch, batches re-cut across epochs so the shares stay equal
            rank, world = dist.rank_world()
            part = {}
            if world > 1:
                if batch_size % world:
                    raise StageError(f"batch size {batch_size} does not split evenly over {world} ranks")
                part = {"part": (rank, world), "across_epochs": True}
            return (x for (x,) in cache.batches(keys=[key], batch_size=batch_size, split="train", seed=seed,
                                                shuffle=True, epochs=10_000, **part))

        def eval_acts():
            for (x,) in cache.batches(keys=[key], batch_size=4096, split="eval", shuffle=False):
                yield x

        adapter = self.model(side)
        windows = [(w[0] if side == "source" else w[1]).ids for w in self.heldout_windows()]
        return ArtifactContext(model_name=adapter.name, layer=layer, adapter=adapter, side=side,
                               train_activations=train_acts, eval_activations=eval_acts, eval_windows=windows,
                               documents=self.documents, massive_dims=list(massive), stitch=stitch,
                               folder=self.rf, config=self.art_cfg, device=self.cfg.device, seed=seed,
                               loss_batch_size=self.cfg.eval.loss_batch_size, progress=self.progress)

    def evaluators(self) -> list:
        reg = registry()
        out = []
        for name in reg.names("evaluators"):
            ev = reg.get("evaluators", name).factory()
            if self.cfg.artifact in ev.applies_to:
                out.append(ev)
        return out

    # -- the whole run ---------------------------------------------------------------------
    def stage_deps(self) -> dict[str, dict]:
        """Every stage of this run and the config it depends on (checked before anything runs)."""
        name = self.cfg.artifact
        art = self.deps("stitch", "eval", name) | {"artifact": name}
        stages = {"cache": self.deps(), "stitch": self.deps("stitch"), "stitch_ce": self.deps("stitch", "eval")}
        for stage in ("source", "transfer", "baseline", "evaluate"):
            if stage != "baseline" or self.kind.supports_baseline:
                stages[f"{name}.{stage}"] = art
        return stages

    def stage_outputs(self) -> dict[str, dict]:
        """What each stage writes (fingerprinted in its marker)."""
        rf, name = self.rf, self.cfg.artifact
        outs = {"cache": {"cache": rf.cache}, "stitch": {"stitch": rf.stitch},
                f"{name}.source": {"source": rf.artifact(name, "source")},
                f"{name}.transfer": {"transferred": rf.artifact(name, "transferred")}}
        if self.kind.supports_baseline:
            outs[f"{name}.baseline"] = {"random": rf.artifact(name, "random")}
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
                snapshot(self.cfg, self.rf.config_file)

            def preflight() -> None:  # before the run folder exists or any stage writes
                from .preflight import check_input_files, check_lengths

                check_values(self.cfg)  # a config built in Python, not through build_config
                check_input_files(self.cfg)  # every file: input exists and is non-empty text
                self.kind.preflight(self.art_cfg)  # the kind's own inputs (task files: columns, classes)
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
        cfg, rf, kind, name = self.cfg, self.rf, self.kind, self.cfg.artifact
        from ..cache.corpus import corpus_files

        corpus = corpus_files(cfg.cache.corpus)  # a file: corpus, or a mix:'s file components
        outputs = self.stage_outputs()
        cache_res = self.stage("cache", self.deps(), self.stage_cache, inputs=corpus, outputs=outputs["cache"])
        dist.on_main(lambda: rf.require("cache", CACHE_FILE))
        stitch_res = self.stage("stitch", self.deps("stitch"), self.stage_stitch, inputs={"cache": rf.cache},
                                outputs=outputs["stitch"])
        meta = stitch_res["meta"]
        lA, lB = int(meta["source_layer"]), int(meta["target_layer"])
        massive = stitch_res["recon"]["massive_dims"]
        art_deps = self.deps("stitch", "eval", name) | {"artifact": name}
        paths = {role: rf.artifact(name, role) for role in LABELS}

        def contexts():  # built when first needed (a reused source stage needs none on ranks other than 0)
            if self._contexts is None:
                stitch = self.load_stitch(meta)
                ctx_a = self.context("source", lA, massive["source"], stitch)
                ctx_b = self.context("target", lB, massive["target"], stitch)
                ctx_a.other, ctx_b.other = ctx_b, ctx_a
                self._contexts = stitch, ctx_a, ctx_b
            return self._contexts

        def save_source(art) -> dict:
            kind.save(art, paths["source"], {"stage": "source", "model": cfg.models.source, "layer": lA})
            return {"folder": str(paths["source"])}

        def source_stage() -> None:
            # every rank builds its contexts before any trains: a failure there ends all ranks, not one
            self.stage(f"{name}.source", art_deps, lambda: kind.obtain(dist.on_all(contexts)[1], self.art_cfg),
                       inputs={"cache": rf.cache}, outputs=outputs[f"{name}.source"], commit=save_source)

        if kind.data_parallel:
            source_stage()
        if not dist.is_main():
            self.log("distributed stages done; rank 0 finishes the run")
            return {}
        with dist.solo():  # the other ranks have left: rank 0 is a world of one
            if not kind.data_parallel:
                source_stage()
            return self._finish(cache_res, stitch_res, contexts, paths, art_deps)

    def _finish(self, cache_res: dict, stitch_res: dict, contexts, paths: dict, art_deps: dict) -> dict:
        """Rank 0 alone: the stages after the artifact's source, metrics.json and report.md."""
        cfg, rf, kind, name = self.cfg, self.rf, self.kind, self.cfg.artifact
        outputs = self.stage_outputs()
        meta = stitch_res["meta"]
        lB = int(meta["target_layer"])
        stitch, ctx_a, ctx_b = contexts()

        def rel(role: str) -> str:
            return str(paths[role].relative_to(rf.root))

        ce_res = rf.run("stitch_ce", self.deps("stitch", "eval"), lambda: self.stage_stitch_ce(stitch), self.log,
                        inputs={"stitch": rf.stitch})
        rf.require(f"{name}.source", rel("source"))
        src_art = kind.load(paths["source"])

        def transfer():
            kind.check(src_art, stitch, "up")
            art = kind.transfer(src_art, stitch, "up", target_model=cfg.models.target,
                                target_hook=self.model("target").hook_name(lB))
            kind.save(art, paths["transferred"], {"stage": "transfer", "source_folder": str(paths["source"]),
                                                  "stitch": str(rf.stitch), "stitch_meta": meta})
            return {"folder": str(paths["transferred"])}

        rf.run(f"{name}.transfer", art_deps, transfer, self.log,
               inputs={"source": paths["source"], "stitch": rf.stitch}, outputs=outputs[f"{name}.transfer"])
        rf.require(f"{name}.transfer", rel("transferred"))
        tgt_art = kind.load(paths["transferred"])
        arms = {LABELS["source"]: Arm(src_art, ctx_a), LABELS["transferred"]: Arm(tgt_art, ctx_b)}

        if kind.supports_baseline:
            def baseline():
                art = kind.baseline(tgt_art, ctx_b)
                kind.save(art, paths["random"], {"stage": "baseline", "like": str(paths["transferred"])})
                return {"folder": str(paths["random"])}

            rf.run(f"{name}.baseline", art_deps, baseline, self.log, inputs={"transferred": paths["transferred"]},
                   outputs=outputs[f"{name}.baseline"])
            rf.require(f"{name}.baseline", rel("random"))
            arms[LABELS["random"]] = Arm(kind.load(paths["random"]), ctx_b)

        def evaluate():
            all_arms = dict(arms)
            for label, arm in kind.extra_arms(src_art, tgt_art, ctx_a, ctx_b).items():
                if label in all_arms or label == "diagnostics":
                    raise StageError(f"artifact kind {name!r} adds an arm named {label!r}, which is taken")
                all_arms[label] = arm
            out: dict[str, dict] = {}
            evaluators = self.evaluators()
            for label, arm in all_arms.items():
                out[label] = {}
                for ev in evaluators:
                    self.log(f"  {ev.name} on {label}")
                    out[label][ev.name] = ev.evaluate(arm.artifact, arm.context)
            diag = kind.diagnose(src_art, tgt_art, stitch, ctx_b, ctx_a)
            if diag is not None:
                out["diagnostics"] = diag
            return out

        arm_inputs = {role: paths[role] for role in LABELS if role != "random" or kind.supports_baseline}
        eval_res = rf.run(f"{name}.evaluate", art_deps, evaluate, self.log,
                          inputs=arm_inputs | {"stitch": rf.stitch, "cache": rf.cache})
        rf.drop_stale_results(self.log)  # analyze / experiment init results built on what this run redid
        for section, data in (("config", run_config_dict(cfg)), ("cache", cache_res), ("stitch", stitch_res),
                              ("stitched_ce", ce_res), (name, eval_res), ("stage_seconds", rf.stage_seconds())):
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
