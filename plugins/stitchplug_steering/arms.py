"""The evaluation arms: which vector, clamped at which value, on which model.

Per model and target language: ``native`` (its own difference of means), ``transferred`` (the other
model's vector carried through the stitch, ``up`` for A -> B and ``down`` for B -> A) and ``random``
(a random unit vector set to the same value as the transferred arm, or the native arm when that
direction is not evaluated). One ``none`` arm per model (no steering).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch

from .vector import LanguageStats, random_unit, transfer_vector


@dataclass
class Side:
    """One model of the pair as the evaluation sees it."""

    key: str  # "A" or "B"
    adapter: object
    layer: int
    stats: LanguageStats
    massive_dims: list[int] = field(default_factory=list)


@dataclass
class SteerArm:
    side: str
    kind: str  # none | native | transferred | random
    lang: str | None = None
    direction: str | None = None  # up | down for transferred
    v: torch.Tensor | None = None
    z: float = 0.0
    z_en: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.kind == "none":
            return f"{self.side}/none"
        tail = f"-{self.direction}" if self.direction else ""
        return f"{self.side}/{self.lang}/{self.kind}{tail}"


def _set(arm: SteerArm, stats: LanguageStats, mode: str, scale: float) -> SteerArm:
    arm.z = stats.z(arm.v, arm.lang, mode, scale)
    arm.z_en = stats.z(arm.v, "en", "literal", 1.0)
    arm.info = stats.projections(arm.v, arm.lang) | {"z": arm.z}
    return arm


def build_arms(sides: dict[str, Side], stitch, languages: list[str], directions: list[str],
               z_mode: str = "literal", z_scale: float = 1.0, exclude_massive: bool = False,
               seed: int = 0) -> list[SteerArm]:
    """All arms of the evaluation, with ``z`` computed in the model each arm runs on."""
    arms = [SteerArm(side=k, kind="none") for k in sides]
    maps = {"up": ("A", "B", getattr(stitch, "P_up", None)), "down": ("B", "A", getattr(stitch, "P_down", None))}
    for lang in languages:
        native = {}
        for k, s in sides.items():
            ex = s.massive_dims if exclude_massive else []
            native[k] = _set(SteerArm(side=k, kind="native", lang=lang, v=s.stats.native(lang, ex)), s.stats, z_mode, z_scale)
        arms += list(native.values())
        ref = dict(native)
        for d in directions:
            src, dst, P = maps[d]
            if src not in sides or dst not in sides or P is None:
                continue
            ex_s = sides[src].massive_dims if exclude_massive else []
            ex_t = sides[dst].massive_dims if exclude_massive else []
            v = transfer_vector(native[src].v, P.detach(), ex_s, ex_t)
            arm = _set(SteerArm(side=dst, kind="transferred", lang=lang, direction=d, v=v), sides[dst].stats, z_mode, z_scale)
            arm.info["cos_with_native"] = float(v.double() @ native[dst].v.double())
            arms.append(arm)
            ref[dst] = arm
        for k, s in sides.items():
            ex = s.massive_dims if exclude_massive else []
            r = random_unit(s.stats.means["en"].shape[0], seed + zlib.crc32(f"{k}:{lang}".encode()), ex)
            arm = SteerArm(side=k, kind="random", lang=lang, v=r, z=ref[k].z, z_en=ref[k].z_en)
            arm.info = {"z": arm.z, "same_z_as": ref[k].label, "cos_with_native": float(r.double() @ native[k].v.double())}
            arms.append(arm)
    return arms
