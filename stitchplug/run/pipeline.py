"""The staged pipeline behind ``stitchplug run``.

Stages (each reused when finished with the same config, see :mod:`stitchplug.run.stages`):

``cache``     paired activations of A and B on the corpus slice (resumable HDF5)
``stitch``    SVCCA layer choice (unless given), fit, held-out reconstruction metrics
``stitch_ce`` stitched next-token losses (paper Table 1) on held-out documents
``source``    the source artifact on A (trained or loaded)
``transfer``  the artifact carried to B through the stitch
``baseline``  a random artifact of the same shape on B
``evaluate``  every registered evaluator that applies, on source (A), transferred and random (B)
``report``    ``metrics.json``, ``report.md`` and plots
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..artifacts import ArtifactContext
from ..config import RunConfig, snapshot
from ..errors import StageError
from ..plugins import registry
from .stages import RunFolder, write_json_atomic

CACHE_FILE = "cache.h5"
STITCH_FILE = "stitch/stitch.safetensors"
ARTIFACT_DIRS = {"source": "artifact_source", "transfer": "artifact_target", "baseline": "artifact_random"}


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
        self.kind = registry().get("artifacts", cfg.artifact).factory()

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

            self._cache = open_cache(self.rf.path(CACHE_FILE), eval_fraction=self.cfg.cache.eval_fraction,
                                     split_seed=self.cfg.seed)
        return self._cache

    def deps(self, *sections: str) -> dict:
        data = self.cfg.model_dump(mode="json")
        keep = {"seed", "device", "dtype", "models", "cache"} | set(sections)
        return {k: v for k, v in data.items() if k in keep}

    # -- stages ----------------------------------------------------------------------------
    def stage_cache(self) -> dict:
        from ..cache.select import cache_stage

        return cache_stage(self.cfg, self.rf.path(CACHE_FILE), self.model, progress=self.progress, log=self.log)

    def stage_stitch(self) -> dict:
        from ..stitch.api import train

        res = train(self.cache(), self.cfg.stitch, self.rf.path(STITCH_FILE), seed=self.cfg.seed,
                    progress=self.progress)
        res.pop("stitch", None)
        res["fit"].pop("history", None)
        return res

    def load_stitch(self, meta: dict):
        from ..stitch.model import Stitch

        self.rf.require("stitch", STITCH_FILE)
        expect = {k: meta[k] for k in ("source_model", "target_model", "source_layer", "target_layer",
                                       "d_source", "d_target") if meta.get(k) is not None}
        return Stitch.load(self.rf.path(STITCH_FILE), expect=expect)

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

    def context(self, side: str, layer: int, massive: list[int]) -> ArtifactContext:
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
        return ArtifactContext(model_name=adapter.name, layer=layer, adapter=adapter, train_activations=train_acts,
                               eval_activations=eval_acts, eval_windows=windows, massive_dims=list(massive),
                               device=self.cfg.device, seed=seed,
                               extras={"loss_batch_size": self.cfg.eval.loss_batch_size,
                                       "progress": self.progress})

    def evaluators(self) -> list:
        reg = registry()
        out = []
        for name in reg.names("evaluators"):
            ev = reg.get("evaluators", name).factory()
            if self.cfg.artifact in getattr(ev, "applies_to", ()):
                out.append(ev)
        return out

    # -- the whole run ---------------------------------------------------------------------
    def run(self) -> dict:
        cfg, rf = self.cfg, self.rf
        snapshot(cfg, rf.path("config.yaml"))
        art_cfg = getattr(cfg, cfg.artifact, None)
        cache_res = rf.run("cache", self.deps(), self.stage_cache, self.log)
        rf.require("cache", CACHE_FILE)
        stitch_res = rf.run("stitch", self.deps("stitch"), self.stage_stitch, self.log)
        meta = stitch_res["meta"]
        stitch = self.load_stitch(meta)
        lA, lB = int(meta["source_layer"]), int(meta["target_layer"])
        massive = stitch_res["recon"]["massive_dims"]
        ce_res = rf.run("stitch_ce", self.deps("stitch", "eval"), lambda: self.stage_stitch_ce(stitch), self.log)

        ctx_a = self.context("source", lA, massive["source"])
        ctx_b = self.context("target", lB, massive["target"])
        art_deps = self.deps("stitch", "eval", cfg.artifact) | {"artifact": cfg.artifact}
        kind = self.kind
        paths = {k: rf.path(v) for k, v in ARTIFACT_DIRS.items()}

        def source():
            art = kind.obtain(ctx_a, art_cfg)
            kind.save(art, paths["source"], {"stage": "source", "model": cfg.models.source, "layer": lA})
            return {"folder": str(paths["source"])}

        rf.run("source", art_deps, source, self.log)
        rf.require("source", ARTIFACT_DIRS["source"])
        src_art = kind.load(paths["source"])

        def transfer():
            if hasattr(kind, "check"):
                kind.check(src_art, stitch, "up")
            art = kind.transfer(src_art, stitch, "up", target_model=cfg.models.target,
                                target_hook=self.model("target").hook_name(lB))
            kind.save(art, paths["transfer"], {"stage": "transfer", "source_folder": str(paths["source"]),
                                               "stitch": str(rf.path(STITCH_FILE)), "stitch_meta": meta})
            return {"folder": str(paths["transfer"])}

        rf.run("transfer", art_deps, transfer, self.log)
        rf.require("transfer", ARTIFACT_DIRS["transfer"])
        tgt_art = kind.load(paths["transfer"])

        def baseline():
            art = kind.baseline(tgt_art, ctx_b)
            kind.save(art, paths["baseline"], {"stage": "baseline", "like": str(paths["transfer"])})
            return {"folder": str(paths["baseline"])}

        rf.run("baseline", art_deps, baseline, self.log)
        rf.require("baseline", ARTIFACT_DIRS["baseline"])
        rnd_art = kind.load(paths["baseline"])

        def evaluate():
            out: dict[str, dict] = {}
            for label, art, ctx in (("source_on_A", src_art, ctx_a), ("transferred_on_B", tgt_art, ctx_b),
                                    ("random_on_B", rnd_art, ctx_b)):
                out[label] = {}
                for ev in self.evaluators():
                    self.log(f"  {ev.name} on {label}")
                    out[label][ev.name] = ev.evaluate(art, ctx)
            if hasattr(kind, "diagnose"):
                out["diagnostics"] = kind.diagnose(src_art, tgt_art, stitch, ctx_b, ctx_a)
            return out

        eval_res = rf.run("evaluate", art_deps, evaluate, self.log)
        metrics = {"config": cfg.model_dump(mode="json"), "cache": cache_res, "stitch": stitch_res,
                   "stitched_ce": ce_res, "artifact": cfg.artifact, "evaluation": eval_res,
                   "stage_seconds": self._stage_seconds()}
        from .report import write_report

        previous = rf.path("metrics.json")
        if previous.exists():  # keep what later commands added (e.g. `stitchplug experiment init`)
            try:
                for key, value in json.loads(previous.read_text()).items():
                    metrics.setdefault(key, value)
            except json.JSONDecodeError:
                self.log(f"warning: {previous} was unreadable; writing a fresh one")
        write_json_atomic(rf.path("metrics.json"), metrics)
        write_report(rf.root, metrics, log=self.log)
        return metrics

    def _stage_seconds(self) -> dict:
        out = {}
        for marker in sorted((self.rf.root / "stages").glob("*.json")):
            try:
                out[marker.stem] = json.loads(marker.read_text()).get("seconds")
            except json.JSONDecodeError:
                pass
        return out


def run(cfg: RunConfig, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    return Pipeline(cfg, log=log, progress=progress).run()
