"""Content fingerprints of a run folder's outputs, recorded in stage markers.

A stage marker records the fingerprint of every input it consumed and every output it wrote. On a
re-run a stage whose inputs or outputs no longer match is *stale* and is redone, so a replaced or redone
upstream output (a refit stitch, a retrained SAE, an edited corpus file) never leaves later stages
silently reused.

A cache is fingerprinted by its stored config and the per-dataset digests its shards already carry
(see :mod:`stitchplug.cache.integrity`), so even a multi-GB cache costs one small read per shard.
Other files and folders are fingerprinted by their bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def _bytes(h, path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)


def _cache(h, entry: Path) -> None:
    import h5py

    from .cache.integrity import DIGEST_ATTR, shard_files

    with h5py.File(entry, "r") as f:
        h.update(str(f.attrs.get("config", "")).encode())
        h.update(str(int(f.attrs.get("complete", 0))).encode())
    for shard in shard_files(entry):
        with h5py.File(shard, "r") as f:
            digests = f.attrs.get(DIGEST_ATTR)
        h.update(shard.name.encode())
        if digests is None:  # an old shard without digests: fall back to its bytes
            _bytes(h, shard)
        else:
            h.update(str(digests).encode())


def content_fingerprint(path: str | Path) -> str | None:
    """A short digest of ``path``'s content (file, folder or activation cache); ``None`` if it is absent."""
    path = Path(path)
    h = hashlib.blake2b(digest_size=12)
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode())
            _bytes(h, f)
    elif path.is_file():
        if path.suffix == ".h5" and path.with_name(path.name + ".shards").is_dir():
            try:
                _cache(h, path)
            except OSError:  # unreadable: its bytes still say whether it changed
                _bytes(h, path)
        else:
            _bytes(h, path)
    else:
        return None
    return h.hexdigest()


def file_inputs(data: Any) -> list[Path]:
    """Every file a config names as ``file:PATH`` (in any field, list or ``mix:`` corpus), in order."""
    out: list[Path] = []
    if hasattr(data, "model_dump"):  # a pydantic config
        data = data.model_dump(mode="json")
    if isinstance(data, dict):
        for v in data.values():
            out += file_inputs(v)
    elif isinstance(data, (list, tuple)):
        for v in data:
            out += file_inputs(v)
    elif isinstance(data, str):
        if data.startswith("mix:"):
            try:
                from .cache.corpus import parse_mix  # noqa: F401 (a mix: corpus's parts)

                out += [p for part, _ in parse_mix(data) for p in file_inputs(part)]
            except Exception:  # a malformed mix is refused where it is parsed
                pass
        elif data.startswith("file:"):
            out.append(Path(data[len("file:"):]))
    return list(dict.fromkeys(out))
