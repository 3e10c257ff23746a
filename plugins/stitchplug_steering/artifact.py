"""The ``steering`` artifact kind: language vectors of one model, moved to the other through a stitch.

The artifact object is :class:`SteeringVectors`: one unit vector per target language at one layer of
one model, plus that model's residual statistics when known (a transferred artifact has none: its
``z`` is recomputed in the target model, from the target's own statistics, at evaluation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._core import ArtifactContext, ArtifactKind, StageError
from .config import SteeringConfig
from .vector import LanguageStats, language_stats, random_unit, transfer_vector


@dataclass
class SteeringVectors:
    model: str
    layer: int | None
    vectors: dict[str, torch.Tensor]
    stats: LanguageStats | None = None
    meta: dict = field(default_factory=dict)


class SteeringKind(ArtifactKind):
    """Difference-of-means language vectors, clamped (paper section 4) or added."""

    name = "steering"
    config_class = SteeringConfig

    def obtain(self, context: ArtifactContext, cfg: SteeringConfig | None) -> SteeringVectors:
        from .steering_run import vector_texts

        cfg = cfg or SteeringConfig()
        context.need("adapter", "layer", who="steering vectors")
        texts, _ = vector_texts(cfg, context.seed)
        ex = list(context.massive_dims) if cfg.exclude_massive else []
        st = language_stats(context.adapter, int(context.layer), texts, cfg.vector_tokens, context.massive_dims)
        return SteeringVectors(context.model_name, int(context.layer), {L: st.native(L, ex) for L in cfg.languages},
                               st, {"origin": "native", "exclude_massive": cfg.exclude_massive})

    def transfer(self, artifact: SteeringVectors, stitch: Any, direction: str = "up", **target: Any) -> SteeringVectors:
        """``normalise(v @ P_up)`` (or ``P_down``), no bias; ``z`` is left to the target model."""
        if direction not in ("up", "down"):
            raise StageError(f"unknown transfer direction {direction!r} (up, down)")
        P = stitch.P_up if direction == "up" else stitch.P_down
        vecs = {L: transfer_vector(v, P.detach()) for L, v in artifact.vectors.items()}
        return SteeringVectors(str(target.get("target_model", "")), target.get("target_layer"), vecs, None,
                               {"origin": f"transferred-{direction}", "from": artifact.model})

    def save(self, artifact: SteeringVectors, folder: str | Path, sidecar: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({L: v.float().contiguous() for L, v in artifact.vectors.items()}, str(folder / "vectors.safetensors"))
        if artifact.stats is not None:
            artifact.stats.save(folder, "stats")
        meta = {"model": artifact.model, "layer": artifact.layer, **artifact.meta, **(sidecar or {})}
        (folder / "steering.json").write_text(json.dumps(meta, indent=2, default=str))
        return folder

    def load(self, folder: str | Path) -> SteeringVectors:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "vectors.safetensors").exists():
            raise StageError(f"{folder} holds no steering vectors (vectors.safetensors is missing)")
        meta = json.loads((folder / "steering.json").read_text())
        stats = LanguageStats.load(folder, "stats") if (folder / "stats.safetensors").exists() else None
        return SteeringVectors(meta.get("model", ""), meta.get("layer"), load_file(str(folder / "vectors.safetensors")),
                               stats, meta)

    def baseline(self, like: SteeringVectors, context: ArtifactContext) -> SteeringVectors:
        """Random unit vectors of the same width (seeded per language)."""
        vecs = {L: random_unit(v.shape[0], context.seed + i + 1) for i, (L, v) in enumerate(sorted(like.vectors.items()))}
        return SteeringVectors(like.model, like.layer, vecs, None, {"origin": "random"})
