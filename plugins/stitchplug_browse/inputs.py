"""What ``browse`` reads from a run folder: config, stitch layers, the two SAEs, models, held-out text.

:func:`sae_roles` is the one place that knows where the SAEs live (a rebase onto a new artifact API
changes only it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

from ._core import RunFolder, StageError


def sae_roles(rf: RunFolder) -> dict[str, Path]:
    """``{"source": folder, "transferred": folder}`` of the run's SAEs; one-line error if one is missing."""
    out = {}
    for role in ("source", "transferred"):
        path = rf.artifact("sae", role)
        if not path.exists():
            raise StageError(f"{path} is missing: `stitchplug browse` needs the SAEs of `stitchplug run --artifact sae` "
                             "in this folder")
        out[role] = path
    return out


@dataclass
class Window:
    """One held-out document on both models: A's first ``context_size`` tokens, B cut at the same character."""

    ids_a: torch.Tensor
    ends_a: torch.Tensor
    special_a: torch.Tensor
    ids_b: torch.Tensor
    ends_b: torch.Tensor
    special_b: torch.Tensor
    text: str = ""


def windows(texts: list[str], A: Any, B: Any, context_size: int) -> list[Window]:
    out = []
    for text in texts:
        ea, eb = A.encode(text), B.encode(text)
        ia, ea_, sa = ea.ids[:context_size], ea.ends[:context_size], ea.special[:context_size]
        last = int(ea_.max()) if len(ia) else -1
        inside = (eb.ends <= last).nonzero() if last >= 0 else eb.ends[:0]
        keep = int(inside.max()) + 1 if len(inside) else 0
        if (~sa).sum() == 0 or keep == 0:
            continue
        out.append(Window(ia, ea_, sa, eb.ids[:keep], eb.ends[:keep], eb.special[:keep], text))
    return out


class RunInputs:
    """Lazily loaded pieces of a run folder (models and SAEs load on first use)."""

    def __init__(self, run: str | Path, log: Callable[[str], None] = print):
        self.rf = RunFolder.existing(run)
        self.log = log
        self.cfg = self.rf.config()
        self.sae_dirs = sae_roles(self.rf)
        stitch = self.rf.load_stitch()
        self.meta = dict(stitch.meta)
        self.layers = {"a": int(self.meta["source_layer"]), "b": int(self.meta["target_layer"])}
        self.context_size = int(self.cfg.get("cache", {}).get("context_size", 128))
        self._models: dict[str, Any] = {}
        self._saes: dict[str, Any] = {}

    @property
    def model_names(self) -> dict[str, str]:
        m = self.cfg.get("models", {})
        return {"a": str(m.get("source")), "b": str(m.get("target"))}

    def model(self, side: str):
        if side not in self._models:
            self.log(f"loading {self.model_names[side]}")
            self._models[side] = self.rf.load_model("source" if side == "a" else "target")
        return self._models[side]

    def sae(self, side: str):
        if side not in self._saes:
            self._saes[side] = self.rf.load_artifact("sae", "source" if side == "a" else "transferred")
        return self._saes[side]

    def heldout(self, n: int) -> list[str]:
        """``n`` documents of the run's corpus after the cached slice (as `stitchplug analyze` reads)."""
        from ._core import heldout_texts

        c = self.cfg.get("cache", {})
        with self.rf.open_cache() as cache:
            return heldout_texts(SimpleNamespace(doc_start=int(c.get("doc_start", 0)), corpus=c.get("corpus")),
                                 cache, n)

    @torch.no_grad()
    def eval_frequency(self, side: str, batch_size: int = 4096) -> dict | None:
        """Per-latent firing frequency and mean activation when firing on the cache's held-out split
        (the tokens and batches `stitchplug run`'s evaluation used), or None without one."""
        sae = self.sae(side)
        key = ("source" if side == "a" else "target", self.layers[side])
        fire = total = None
        n = 0
        with self.rf.open_cache() as cache:
            try:
                batches = cache.batches(keys=[key], batch_size=batch_size, split="eval", shuffle=False)
                for (x,) in batches:
                    f = sae.encode(x.to(getattr(sae, "dtype", torch.float32)))
                    fire = (f != 0).sum(0) if fire is None else fire + (f != 0).sum(0)
                    s = f.double().sum(0)
                    total = s if total is None else total + s
                    n += x.shape[0]
            except Exception as exc:  # a cache without that layer or split: no numbers, not a failure
                self.log(f"no held-out cache frequencies for side {side.upper()}: {exc}")
                return None
        if not n:
            return None
        return {"frequency": (fire.double() / n).tolist(),
                "mean_when_active": (total / fire.clamp_min(1)).tolist(), "n_tokens": n}
