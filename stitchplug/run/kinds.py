"""The artifact stages of one kind in a run: ``<kind>.source``, ``.transfer``, ``.baseline`` and
``.native``, for the run's own kind and for each kind it builds on (:attr:`ArtifactKind.requires`).

A required kind's stages carry its own name, config section and folders (``artifacts/<kind>/<role>``)
and the same dependencies as in a run of that kind, so a run of the dependent kind reuses what an
earlier run of the required kind left in the folder, and the other way round.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..artifacts import ArtifactContext, ArtifactKind
from ..errors import PluginError, StageError

ROLES = ("source", "transferred", "random", "native")
STAGE_OF = {"source": "source", "transferred": "transfer", "random": "baseline", "native": "native"}


class KindStages:
    """One kind's artifact stages in a pipeline (``pipe``): which run, their deps, outputs and bodies."""

    def __init__(self, pipe, name: str, kind: ArtifactKind, cfg: Any, roles: tuple[str, ...], needs: tuple[str, ...] = ()):
        bad = [r for r in roles if r not in ROLES]
        if bad:
            raise PluginError(f"artifact kind {name!r}: unknown role(s) {', '.join(bad)} (known: {', '.join(ROLES)})")
        if "native" in roles and not kind.supports_native:
            raise PluginError(f"a kind asks for the native {name!r} artifact, but kind {name!r} has no native()")
        self.pipe, self.name, self.kind, self.cfg = pipe, name, kind, cfg
        self.roles = tuple(r for r in ROLES if r in roles and (r != "random" or kind.supports_baseline))
        self.deps = pipe.deps("stitch", "eval", name, *needs) | {"artifact": name}
        if kind.layout:  # left out at 0, so folders written before `layout` existed resume
            self.deps["layout"] = kind.layout
        self.paths = {role: pipe.rf.artifact(name, role) for role in self.roles}

    def stage(self, role: str) -> str:
        return f"{self.name}.{STAGE_OF[role]}"

    def stage_deps(self) -> dict[str, dict]:
        return {self.stage(role): self.deps for role in self.roles}

    def stage_outputs(self) -> dict[str, dict]:
        return {self.stage(role): {role: self.paths[role]} for role in self.roles}

    def rel(self, role: str) -> str:
        return str(self.paths[role].relative_to(self.pipe.rf.root))

    def contexts(self, ctx_a: ArtifactContext, ctx_b: ArtifactContext) -> tuple[ArtifactContext, ArtifactContext]:
        """The run's two contexts with this kind's config section (linked to each other)."""
        if ctx_a.config is self.cfg:
            return ctx_a, ctx_b
        a, b = dataclasses.replace(ctx_a, config=self.cfg), dataclasses.replace(ctx_b, config=self.cfg)
        a.other, b.other = b, a
        return a, b

    def save_source(self, art: Any) -> dict:
        cfg = self.pipe.cfg
        self.kind.save(art, self.paths["source"], {"stage": "source", "model": cfg.models.source,
                                                   "layer": self.pipe.layers()[0]})
        return {"folder": str(self.paths["source"])}

    def load(self, role: str) -> Any:
        self.pipe.rf.require(self.stage(role), self.rel(role))
        return self.kind.load(self.paths[role])

    def after_source(self, stitch, ctx_a: ArtifactContext, ctx_b: ArtifactContext) -> dict[str, Any]:
        """Run (or reuse) transfer, baseline and native; ``{role: artifact}`` for every role."""
        rf, kind, pipe, paths = self.pipe.rf, self.kind, self.pipe, self.paths
        ctx_a, ctx_b = self.contexts(ctx_a, ctx_b)
        outputs = self.stage_outputs()
        arts = {"source": self.load("source")}

        def transfer():
            kind.check(arts["source"], stitch, "up")
            art = kind.transfer(arts["source"], stitch, "up", target_model=pipe.cfg.models.target,
                                target_hook=pipe.model("target").hook_name(pipe.layers()[1]))
            kind.save(art, paths["transferred"], {"stage": "transfer", "source_folder": str(paths["source"]),
                                                  "stitch": str(rf.stitch), "stitch_meta": pipe.stitch_meta})
            return {"folder": str(paths["transferred"])}

        def baseline():
            art = kind.baseline(arts["transferred"], ctx_b)
            kind.save(art, paths["random"], {"stage": "baseline", "like": str(paths["transferred"])})
            return {"folder": str(paths["random"])}

        def native():
            art = kind.native(arts["source"], ctx_b, self.cfg)
            kind.save(art, paths["native"], {"stage": "native", "like": str(paths["source"]),
                                             "model": pipe.cfg.models.target, "layer": pipe.layers()[1]})
            return {"folder": str(paths["native"])}

        bodies = {"transferred": (transfer, {"source": paths["source"], "stitch": rf.stitch}),
                  "random": (baseline, {"transferred": paths.get("transferred")}),
                  "native": (native, {"source": paths["source"], "cache": rf.cache})}
        for role in self.roles[1:]:
            if role == "random" and "transferred" not in arts:
                raise StageError(f"kind {self.name!r}: the random baseline needs the transferred artifact")
            fn, inputs = bodies[role]
            rf.run(self.stage(role), self.deps, fn, pipe.log, inputs=inputs, outputs=outputs[self.stage(role)])
            arts[role] = self.load(role)
        return arts
