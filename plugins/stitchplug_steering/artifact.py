"""The ``steering`` artifact kind on the run pipeline's arms.

The artifact object is :class:`SteeringVectors`: one unit vector per target language at one layer
of one model (``role`` says which arm it is; a ``random`` artifact also carries ``zref``, the vectors
whose clamp value it borrows). ``z`` is never stored with a vector that moved: the evaluator
recomputes it in the model the vector runs on, from that model's own language statistics.

Arms: the pipeline evaluates ``source_on_A`` (native A), ``transferred_on_B`` (A -> B through
``P_up``) and ``random_on_B``; :meth:`SteeringKind.extra_arms` adds ``native_on_B``,
``transferred_down_on_A`` (B -> A through ``P_down``), ``random_on_A`` and ``none_on_A/B``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._core import Arm, ArtifactContext, ArtifactKind, StageError, write_json_atomic
from .config import PRESETS, SteeringConfig
from .vector import random_unit, transfer_vector


@dataclass
class SteeringVectors:
    model: str
    layer: int | None
    vectors: dict[str, torch.Tensor]
    role: str = "native"
    zref: dict[str, torch.Tensor] | None = None
    meta: dict = field(default_factory=dict)


def _massive(stitch: Any, side: str) -> list[int]:
    return list((getattr(stitch, "meta", {}) or {}).get("massive_dims", {}).get(side, []))


class SteeringKind(ArtifactKind):
    """Difference-of-means language vectors, clamped (paper section 4) or added."""

    name = "steering"
    config_class = SteeringConfig
    presets = PRESETS
    supports_baseline = True

    def obtain(self, context: ArtifactContext, cfg: SteeringConfig | None) -> SteeringVectors:
        from .steering_run import context_stats

        cfg = cfg or SteeringConfig()
        st = context_stats(context, cfg)
        ex = list(context.massive_dims) if cfg.exclude_massive else []
        return SteeringVectors(context.model_name, int(context.layer), {L: st.native(L, ex) for L in cfg.languages},
                               "native", None, {"exclude_massive": cfg.exclude_massive, "massive_dims": ex})

    def transfer(self, artifact: SteeringVectors, stitch: Any, direction: str = "up", **target: Any) -> SteeringVectors:
        """``normalise(v @ P_up)`` (or ``P_down``), no bias; massive dims of both sides zeroed when the
        source vector was built without them."""
        if direction not in ("up", "down"):
            raise StageError(f"unknown transfer direction {direction!r} (up, down)")
        P = stitch.P_up if direction == "up" else stitch.P_down
        src, dst = ("source", "target") if direction == "up" else ("target", "source")
        ex = bool(artifact.meta.get("exclude_massive"))
        ex_s, ex_t = (_massive(stitch, src), _massive(stitch, dst)) if ex else ([], [])
        vecs = {L: transfer_vector(v, P.detach(), ex_s, ex_t) for L, v in artifact.vectors.items()}
        return SteeringVectors(str(target.get("target_model", "")), target.get("target_layer"), vecs,
                               f"transferred-{direction}", None,
                               {"from": artifact.model, "exclude_massive": ex, "massive_dims": ex_t})

    def check(self, artifact: SteeringVectors, stitch: Any, direction: str = "up") -> None:
        d = stitch.d_source if direction == "up" else stitch.d_target
        for L, v in artifact.vectors.items():
            if v.shape[-1] != d:
                raise StageError(f"steering vector {L!r} has width {v.shape[-1]} but the stitch reads width {d}")

    def save(self, artifact: SteeringVectors, folder: str | Path, sidecar: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"v:{L}": v.float().contiguous() for L, v in artifact.vectors.items()}
        tensors |= {f"zref:{L}": v.float().contiguous() for L, v in (artifact.zref or {}).items()}
        save_file(tensors, str(folder / "vectors.safetensors"))
        meta = {"model": artifact.model, "layer": artifact.layer, "role": artifact.role, **artifact.meta,
                **(sidecar or {})}
        write_json_atomic(folder / "steering.json", meta)
        return folder

    def load(self, folder: str | Path) -> SteeringVectors:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "vectors.safetensors").exists() or not (folder / "steering.json").exists():
            raise StageError(f"{folder} holds no steering vectors (vectors.safetensors or steering.json missing)")
        meta = json.loads((folder / "steering.json").read_text())
        t = load_file(str(folder / "vectors.safetensors"))
        zref = {k[5:]: v for k, v in t.items() if k.startswith("zref:")} or None
        return SteeringVectors(meta.pop("model", ""), meta.pop("layer", None),
                               {k[2:]: v for k, v in t.items() if k.startswith("v:")}, meta.pop("role", "native"),
                               zref, meta)

    def baseline(self, like: SteeringVectors, context: ArtifactContext) -> SteeringVectors:
        """Random unit vectors (seeded per model and language) clamped at ``like``'s z."""
        ex = list(like.meta.get("massive_dims", []))
        vecs = {L: random_unit(v.shape[0], context.seed + 7919 * (i + 1) + len(context.model_name), ex)
                for i, (L, v) in enumerate(sorted(like.vectors.items()))}
        return SteeringVectors(like.model, like.layer, vecs, "random", dict(like.vectors), {"like": like.role})

    def extra_arms(self, source: SteeringVectors, transferred: SteeringVectors, source_context: ArtifactContext,
                   target_context: ArtifactContext) -> dict[str, Arm]:
        cfg = source_context.config or SteeringConfig()
        a, b = source_context, target_context
        out: dict[str, Arm] = {}
        folder = a.folder

        def keep(role: str, art: SteeringVectors) -> SteeringVectors:
            if folder is not None:
                self.save(art, folder.artifact(self.name, role))
            return art

        native_b = keep("native_B", self.obtain(b, cfg))
        out["native_on_B"] = Arm(native_b, b)
        ref_a = source
        if "down" in cfg.directions:
            down = keep("transferred_down", self.transfer(native_b, a.stitch, "down", target_model=a.model_name,
                                                          target_layer=a.layer))
            out["transferred_down_on_A"] = Arm(down, a)
            ref_a = down
        if "random" in cfg.arms:
            out["random_on_A"] = Arm(keep("random_A", self.baseline(ref_a, a)), a)
        if "none" in cfg.arms:
            empty = SteeringVectors("", None, {}, "none")
            out["none_on_A"], out["none_on_B"] = Arm(empty, a), Arm(empty, b)
        return out

    def aggregate(self, results: dict, cfg: Any) -> dict:
        """The step across arms: the relative transfer gap of every transferred vector to its
        model's native vector and to no steering (the report renders it)."""
        from .evaluate import transfer_gaps
        from .report import merge_pipeline_results

        return {"gaps": transfer_gaps(merge_pipeline_results(results)["arms"])}

    def report_markdown(self, metrics: dict, folder: Any) -> str | None:
        from .report import pipeline_section

        return pipeline_section(metrics.get(self.name, {}), folder)

    def summary(self, results: dict) -> list[str]:
        from .report import summary_lines

        return summary_lines(results)
