"""On-disk format constants and validation shared by the writer and the reader (see docs/cache.md)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import CacheError

FORMAT = "stitchplug-paired-cache"
FORMAT_VERSION = 1
SIDES = ("source", "target")
FLOAT16_MAX = 65504.0
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
BF16_ATTR = "stitchplug_dtype"
"""Dataset attribute marking ``uint16`` data as the raw bits of bfloat16 (HDF5 has no bfloat16 type)."""

CONTENT_FIELDS = ("format_version", "source_model", "target_model", "source_layers", "target_layers",
                  "source_fingerprint", "target_fingerprint", "corpus", "doc_start", "max_docs", "tokens",
                  "context_size", "dtype", "alignment_method", "shard_rows", "corpus_fingerprint")
"""Config fields that determine a cache's content; a cache is reused only if all of them match."""

RESUME_FIELDS = CONTENT_FIELDS + ("batch_size",)
"""Fields that must also match to resume unfinished shards (batch composition changes the last bits)."""


def bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> the raw bits of bfloat16 as ``uint16`` (round to nearest even, as torch does)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """The raw ``uint16`` bits of bfloat16 -> float32 (exact: bfloat16 is float32's top half)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def is_bfloat16(ds: h5py.Dataset) -> bool:
    return ds.dtype == np.uint16 and ds.attrs.get(BF16_ATTR) == "bfloat16"


def store(x: np.ndarray, dtype: str, what: str) -> np.ndarray:
    """``x`` as stored in ``dtype``; a one-line :class:`CacheError` naming ``what`` if it cannot be."""
    if not np.isfinite(x).all():
        raise CacheError(f"{what} holds non-finite values (inf/nan); the model's activations are broken")
    if dtype == "float16":
        peak = float(np.abs(x).max(initial=0.0))
        if peak > FLOAT16_MAX:
            raise CacheError(f"float16 cannot store {what}: values reach {peak:,.0f}, beyond float16's "
                             f"maximum {FLOAT16_MAX:,.0f}; use --cache-dtype bfloat16 (same range as float32) or float32")
        return x.astype(np.float16)
    if dtype == "bfloat16":
        return bfloat16_bits(x)
    return x.astype(np.float32, copy=False)


def layer_key(layer: int) -> str:
    return f"resid_pre_{int(layer)}"


def shard_dir(path: str | Path) -> Path:
    """Folder holding the shards behind an entry file ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".shards")


def open_h5(path: str | Path, what: str = "activation cache") -> h5py.File:
    """Open read-only, turning any HDF5 failure into a one-line :class:`CacheError`."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise CacheError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as exc:
        first = (str(exc).splitlines() or ["unreadable"])[0]
        raise CacheError(f"{path} is not a readable HDF5 {what} (corrupt or truncated?): {first}") from None


def stored_config(f: h5py.File, path: str | Path) -> dict:
    """The content config of a stitchplug cache or shard file; :class:`CacheError` if foreign."""
    if f.attrs.get("format") != FORMAT:
        raise CacheError(f"{path} is an HDF5 file but not a stitchplug paired activation cache")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise CacheError(f"{path} has cache format version {version}; this stitchplug reads version "
                         f"{FORMAT_VERSION} (rebuild the cache)")
    try:
        return json.loads(f.attrs["config"])
    except (KeyError, TypeError, ValueError):
        raise CacheError(f"{path} is a stitchplug cache with a missing or corrupt 'config' attribute") from None


def config_diff(stored: dict, wanted: dict, fields=CONTENT_FIELDS) -> list[str]:
    """``'field (cached X, requested Y)'`` for every one of ``fields`` that differs."""
    out = []
    for key in fields:
        if key in wanted and stored.get(key) != wanted[key]:
            out.append(f"{key} (cached {stored.get(key)!r}, requested {wanted[key]!r})")
    return out


def refuse_mismatch(path: str | Path, stored: dict, wanted: dict, fields=CONTENT_FIELDS) -> None:
    diff = config_diff(stored, wanted, fields)
    if diff:
        raise CacheError(f"cache {path} was built with a different configuration: {'; '.join(diff)}. "
                         f"Delete it or write to another output path")
