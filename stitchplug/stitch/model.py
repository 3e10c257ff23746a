"""The stitch: two independent affine maps between residual streams (paper §2, Eq. 3).

Row-vector convention: ``T_up(h_A) = h_A @ P_up + b_up`` and ``T_down(h_B) = h_B @ P_down + b_down``.
On disk a stitch is ONE safetensors file holding exactly ``P_up``, ``b_up``, ``P_down``, ``b_down``
plus a JSON sidecar (``<file>.json``) with the models, layers, hook names, widths, training
tokens, final losses, FLOPs and solver.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..atomic import save_safetensors, write_text_atomic
from ..errors import StageError

FORMAT_VERSION = 1
TENSORS = ("P_up", "b_up", "P_down", "b_down")


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements."""
    return (x - y).pow(2).mean()


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")



def eq3_total(parts: dict, alpha: float = 1.0):
    """Paper Eq. 3 from its four MSE terms (the one place they are combined):
    ``up + down + alpha * (aba + bab)``. Works on floats and on tensors."""
    return parts["up"] + parts["down"] + alpha * (parts["aba"] + parts["bab"])

class Stitch(nn.Module):
    """Affine maps up (A -> B) and down (B -> A); biases start at zero, weights at small random values."""

    def __init__(self, d_source: int, d_target: int, seed: int | None = 0, init_scale: float | None = None):
        super().__init__()
        self.d_source, self.d_target = int(d_source), int(d_target)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        s_up = init_scale if init_scale is not None else d_source ** -0.5
        s_down = init_scale if init_scale is not None else d_target ** -0.5
        self.P_up = nn.Parameter(torch.randn(d_source, d_target, generator=gen) * s_up)
        self.b_up = nn.Parameter(torch.zeros(d_target))
        self.P_down = nn.Parameter(torch.randn(d_target, d_source, generator=gen) * s_down)
        self.b_down = nn.Parameter(torch.zeros(d_source))
        self.meta: dict[str, Any] = {}

    @classmethod
    def identity(cls, d: int) -> "Stitch":
        """The identity stitch between two streams of the same width (a test fixture)."""
        s = cls(d, d)
        with torch.no_grad():
            s.P_up.copy_(torch.eye(d))
            s.P_down.copy_(torch.eye(d))
        return s

    def up(self, h: torch.Tensor) -> torch.Tensor:
        """T_up: A's activations [..., dA] -> B's space [..., dB]."""
        return h @ self.P_up.to(h.dtype) + self.b_up.to(h.dtype)

    def down(self, h: torch.Tensor) -> torch.Tensor:
        """T_down: B's activations [..., dB] -> A's space [..., dA]."""
        return h @ self.P_down.to(h.dtype) + self.b_down.to(h.dtype)

    def loss(self, hA: torch.Tensor, hB: torch.Tensor, alpha: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
        """Paper Eq. 3: MSE(up(A),B) + MSE(down(B),A) + alpha*(MSE(down(up(A)),A) + MSE(up(down(B)),B)).

        Each MSE is a mean over elements. Returns the total and its four parts as floats.
        """
        up_a = self.up(hA)
        down_b = self.down(hB)
        parts_t = {
            "up": mse(up_a, hB),
            "down": mse(down_b, hA),
            "aba": mse(self.down(up_a), hA),
            "bab": mse(self.up(down_b), hB),
        }
        total = eq3_total(parts_t, alpha)
        parts = {k: float(v.detach()) for k, v in parts_t.items()}
        parts["total"] = float(total.detach())
        return total, parts

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write the 4 tensors to ``path`` (safetensors) and the metadata to ``path + '.json'``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: getattr(self, k).detach().float().contiguous().cpu() for k in TENSORS}
        save_safetensors(tensors, path)  # through path.tmp: a full disk is one line, no half file
        info = dict(self.meta)
        info.update(meta or {})
        info.update({"format_version": FORMAT_VERSION, "d_source": self.d_source, "d_target": self.d_target})
        write_text_atomic(sidecar_path(path), json.dumps(info, indent=2, sort_keys=True))
        self.meta = info
        return path

    @classmethod
    def load(cls, path: str | Path, expect: dict[str, Any] | None = None) -> "Stitch":
        """Load a saved stitch, checking shapes and (optionally) metadata.

        ``expect`` may hold ``source_model``, ``target_model``, ``source_layer``, ``target_layer``,
        ``d_source``, ``d_target``; any mismatch raises :class:`StageError` naming it.
        """
        path = Path(path)
        if not path.exists():
            raise StageError(f"stitch file not found: {path}")
        side = sidecar_path(path)
        if not side.exists():
            raise StageError(f"stitch {path} has no metadata sidecar {side.name}")
        try:
            meta = json.loads(side.read_text())
        except json.JSONDecodeError as exc:
            raise StageError(f"stitch metadata {side} is not valid JSON: {exc}") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise StageError(f"stitch {path} has format version {meta.get('format_version')!r}, "
                             f"this stitchplug reads version {FORMAT_VERSION}")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise StageError(f"stitch {path} is not a readable safetensors file: {exc}") from None
        if set(tensors) != set(TENSORS):
            raise StageError(f"stitch {path} holds tensors {sorted(tensors)}, expected exactly {list(TENSORS)}")
        dA, dB = int(meta.get("d_source", -1)), int(meta.get("d_target", -1))
        shapes = {"P_up": (dA, dB), "b_up": (dB,), "P_down": (dB, dA), "b_down": (dA,)}
        for name, shape in shapes.items():
            if tuple(tensors[name].shape) != shape:
                raise StageError(f"stitch {path}: {name} has shape {tuple(tensors[name].shape)}, "
                                 f"expected {shape} from its metadata")
        for key, want in (expect or {}).items():
            if want is None:
                continue
            have = meta.get(key)
            if have != want:
                raise StageError(f"stitch {path} was fitted for {key}={have!r} but is used with {key}={want!r}")
        s = cls(dA, dB, seed=None)
        with torch.no_grad():
            for name in TENSORS:
                getattr(s, name).copy_(tensors[name])
        s.meta = meta
        return s
