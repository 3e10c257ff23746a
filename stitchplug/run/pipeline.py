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
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

from ..artifacts import ArtifactContext, ArtifactKind, Arm
from ..config import RunConfig, run_config_class, run_config_dict, snapshot
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
        keep = {"seed", "device", "dtype", "models", "cache"} | set(sections)
        return {k: v for k, v in data.items() if k in keep}

    # -- stages ----------------------------------------------------------------------------
    def stage_cache(self) -> dict:
        from ..cache.select import cache_stage

        return cache_stage(self.cfg, self.rf.cache, self.model, progress=self.progress, log=self.log)

    def stage_stitch(self) -> dict:
        from ..stitch.api import train

        res = train(self.cache(), self.cfg.stitch, self.rf.stitch, seed=self.cfg.seed,
                    progress=self.progress)
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
            for (x,) in cache.batches(keys=[key], batch_size=batch_size, split="train", seed=seed,
                                      shuffle=True, epochs=10_000):
                yield x

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
        with self.rf.writing("stitchplug run"):  # one writer per run folder
            # before config.yaml is touched: a changed config, or an output replaced behind its marker
            self.rf.check(self.stage_deps())
            for stage, outputs in self.stage_outputs().items():
                self.rf.stale(stage, outputs=outputs)
            return self._run()

    def _run(self) -> dict:
        cfg, rf, kind, name = self.cfg, self.rf, self.kind, self.cfg.artifact
        (rf.root / "stages").mkdir(parents=True, exist_ok=True)
        snapshot(cfg, rf.config_file)
        corpus = {"corpus": cfg.cache.corpus[len("file:"):]} if cfg.cache.corpus.startswith("file:") else {}
        outputs = self.stage_outputs()
        cache_res = rf.run("cache", self.deps(), self.stage_cache, self.log, inputs=corpus, outputs=outputs["cache"])
        rf.require("cache", CACHE_FILE)
        stitch_res = rf.run("stitch", self.deps("stitch"), self.stage_stitch, self.log, inputs={"cache": rf.cache},
                            outputs=outputs["stitch"])
        meta = stitch_res["meta"]
        stitch = self.load_stitch(meta)
        lA, lB = int(meta["source_layer"]), int(meta["target_layer"])
        massive = stitch_res["recon"]["massive_dims"]
        ce_res = rf.run("stitch_ce", self.deps("stitch", "eval"), lambda: self.stage_stitch_ce(stitch), self.log,
                        inputs={"stitch": rf.stitch})

        ctx_a = self.context("source", lA, massive["source"], stitch)
        ctx_b = self.context("target", lB, massive["target"], stitch)
        ctx_a.other, ctx_b.other = ctx_b, ctx_a
        art_deps = self.deps("stitch", "eval", name) | {"artifact": name}
        paths = {role: rf.artifact(name, role) for role in LABELS}

        def rel(role: str) -> str:
            return str(paths[role].relative_to(rf.root))

        def source():
            art = kind.obtain(ctx_a, self.art_cfg)
            kind.save(art, paths["source"], {"stage": "source", "model": cfg.models.source, "layer": lA})
            return {"folder": str(paths["source"])}

        rf.run(f"{name}.source", art_deps, source, self.log, inputs={"cache": rf.cache},
               outputs=outputs[f"{name}.source"])
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
