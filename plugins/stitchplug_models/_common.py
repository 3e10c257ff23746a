"""Small helpers shared by the model loaders: cache folder, dtype names, offline mode."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import torch

from stitchplug.api import ModelLoadError

OFFLINE_MODELS = ("smollm2-135m", "gemma-3-270m")
"""Models that load without any hub access (shipped inside pip packages)."""

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64,
}


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"`` / ``"bf16"`` / a ``torch.dtype`` -> ``torch.dtype``; unknown names raise ModelLoadError."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r} (known: float32, float16, bfloat16, float64)")
    return _DTYPES[key]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The stitchplug cache folder: ``cache_dir``, else ``$STITCHPLUG_CACHE``, else ``~/.cache/stitchplug``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("STITCHPLUG_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "stitchplug"


@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
    """Make transformers / huggingface_hub refuse network access for the duration of the block.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once at import, so the module constant is patched
    as well as the environment; both are restored afterwards.
    """
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        constants = None
    old_const = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = old_const
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def model_on(model: torch.nn.Module, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Move a model to ``device``/``dtype`` with a one-line error for an unusable device.

    A HookedTransformer's own ``.to`` walks ``state_dict()`` per module (seconds for 135M
    parameters), so it is skipped when nothing has to move and replaced by ``nn.Module.to`` plus
    the ``cfg`` update otherwise.
    """
    try:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        params = list(model.parameters())
        if all(p.device == dev and p.dtype == dtype for p in params):
            return model
        torch.nn.Module.to(model, device=dev, dtype=dtype)
        if hasattr(model, "cfg"):
            model.cfg.device = str(dev)
            model.cfg.dtype = dtype
        return model
    except (RuntimeError, AssertionError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot put the model on device {device!r}: {first}") from exc
