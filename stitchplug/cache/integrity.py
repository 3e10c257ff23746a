"""Integrity of cache shards: a digest per dataset, stored in the shard when it is written.

HDF5's fletcher32 filter needs chunked datasets, which the reader's zero-copy memory maps cannot
read, so each shard instead carries ``attrs["digests"]``: a JSON map from dataset name to a BLAKE2b
digest of its bytes. :func:`verify_shard` re-reads a shard and checks, in order: that it opens, that
every dataset fits inside the file (truncation), every digest, and that float datasets are finite.
``stitchplug cache --verify`` reports each bad shard on one line, and ``stitchplug cache`` verifies
before it reuses or resumes a cache, rewriting from the first bad shard on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from .format import bfloat16_to_float32, is_bfloat16, shard_dir

DIGEST_ATTR = "digests"
UNVERIFIABLE = "has no stored digests (written by an older stitchplug; rebuild it to verify)"
"""What :func:`verify_shard` says of a shard it cannot check; such a shard is reported, never rewritten."""
_ROWS_PER_READ = 8192


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def _digest_and_finite(ds: h5py.Dataset) -> tuple[str, bool]:
    h = hashlib.blake2b(digest_size=16)
    finite = True
    bf16 = is_bfloat16(ds)
    floating = ds.dtype.kind == "f" or bf16
    if ds.shape == () or ds.dtype.kind == "O":
        data = ds[()]
        h.update(json.dumps(data.tolist() if isinstance(data, np.ndarray) else data, default=str).encode())
        return h.hexdigest(), True
    for start in range(0, max(ds.shape[0], 1), _ROWS_PER_READ):
        block = np.ascontiguousarray(ds[start:start + _ROWS_PER_READ])
        h.update(block.tobytes())
        if floating and finite and not np.isfinite(bfloat16_to_float32(block) if bf16 else block).all():
            finite = False
    return h.hexdigest(), finite


def stamp(path: str | Path, known: dict[str, str] | None = None) -> None:
    """Store the digest of every dataset of the shard file ``path`` (call before renaming it final).
    ``known``: digests already computed from the bytes written (:func:`~stitchplug.cache.hostwork.digest`);
    the other datasets are read back."""
    known = known or {}
    with h5py.File(path, "r+") as f:
        f.attrs[DIGEST_ATTR] = json.dumps({n: known[n] if n in known else _digest_and_finite(f[n])[0]
                                           for n in _datasets(f)}, sort_keys=True)


def verify_shard(path: str | Path) -> str | None:
    """``None`` if the shard is intact, else a one-line description of the first problem found."""
    path = Path(path)
    try:
        size = os.path.getsize(path)
        with h5py.File(path, "r") as f:
            raw = f.attrs.get(DIGEST_ATTR)
            if raw is None:
                return UNVERIFIABLE
            digests = json.loads(raw)
            names = _datasets(f)
            if sorted(digests) != names:
                return "its datasets differ from those it was written with"
            for name in names:
                ds = f[name]
                off = ds.id.get_offset()
                if off is not None and off + ds.id.get_storage_size() > size:
                    return f"is truncated ({size:,} bytes; dataset {name} needs {off + ds.id.get_storage_size():,})"
                digest, finite = _digest_and_finite(ds)
                if digest != digests[name]:
                    return f"dataset {name} does not match its digest (corrupt bytes)"
                if not finite:
                    return f"dataset {name} holds non-finite values"
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        return f"is unreadable ({first})"
    return None


def shard_files(entry: str | Path) -> list[Path]:
    """The finished shard files behind the entry file ``entry``, in order."""
    return sorted(shard_dir(entry).glob("shard_*.h5"))


MISSING = "is missing (deleted?)"


def _expected(entry: str | Path) -> list[Path]:
    """Shard paths ``shard_00000 .. shard_NNNNN`` up to the last one present, gaps included."""
    files = shard_files(entry)
    indices = [int(p.stem.split("_")[1]) for p in files if p.stem.split("_")[1].isdigit()]
    if not indices:
        return []
    return [shard_dir(entry) / f"shard_{k:05d}.h5" for k in range(max(indices) + 1)]


def _problem(p: Path) -> str | None:
    return verify_shard(p) if p.exists() else MISSING


def verify_cache(entry: str | Path) -> dict[Path, str]:
    """``{shard: problem}`` for every bad or missing shard behind ``entry`` (empty when all are intact)."""
    return {p: problem for p in _expected(entry) if (problem := _problem(p)) is not None}


def first_bad_shard(entry: str | Path) -> tuple[int, Path, str] | None:
    """``(index, path, problem)`` of the first shard that fails verification or is missing, or ``None``
    (shards without digests are not failures: they cannot be checked)."""
    for i, p in enumerate(_expected(entry)):
        problem = _problem(p)
        if problem is not None and problem != UNVERIFIABLE:
            return i, p, problem
    return None


def drop_from(entry: str | Path, index: int) -> int:
    """Delete the entry file and shards ``index`` onward (so a build resumes there); return how many
    shards were deleted. Call only while holding the cache's writer lock."""
    entry = Path(entry)
    if entry.exists():
        entry.unlink()
    dropped = [p for p in shard_files(entry) if int(p.stem.split("_")[1]) >= index]
    for p in dropped:
        p.unlink()
    return len(dropped)
