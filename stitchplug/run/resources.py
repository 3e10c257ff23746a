"""What the stages of ``stitchplug run`` work on, and the core stages' bodies.

:class:`RunResources` is the base of :class:`~stitchplug.run.pipeline.Pipeline`: the models (loaded
when first asked for), the paired activation cache, the held-out windows and corpus documents, the
:class:`~stitchplug.artifacts.ArtifactContext` a kind's stages get on each side, the evaluators that
apply, and the bodies of the ``cache``, ``stitch`` and ``stitch_ce`` stages. Which stages run, on
which rank, and what their markers record is :mod:`stitchplug.run.pipeline`'s.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

from .. import dist
from ..artifacts import ArtifactContext
from ..config import RunConfig
from ..errors import StageError
from ..plugins import registry
from ..runfolder import RunFolder


class RunResources:
    """Lazily loaded models, cache and held-out windows of one run; set up by ``Pipeline.__init__``."""

    cfg: RunConfig
    rf: RunFolder
    log: Callable[[str], None]
    progress: bool
    art_cfg: Any
    _models: dict[str, Any]
    _cache: Any
    _eval_windows: Any

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
            wins = windows_for_texts(texts, self.model("source"), self.model("target"), self.cfg.cache.context_size,
                                     aligner=self.cfg.cache.aligner)
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
