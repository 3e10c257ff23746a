"""Atomic file writers and the disk-error mapping (a neutral module: anything may import it, it imports
nothing of stitchplug).

Every save goes through a temporary file next to its target that is renamed into place only when it
is complete; a failed save removes its temporary file (:func:`replacing`). Whatever a library raises
for a full or read-only disk (``OSError``, safetensors' ``SafetensorError``, h5py's errors, torch's
``RuntimeError: ... file write failed``) is turned into one ``OSError`` carrying the errno and the path
(:func:`as_disk_error`), which the CLI prints as its one-line disk error.
"""

from __future__ import annotations

import errno as _errno
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_CODE = re.compile(r"(?:Os \{ code: |errno = |\[Errno |os error )(\d+)")
_WORDS = {"no space left": _errno.ENOSPC, "read-only file system": _errno.EROFS, "disk quota": _errno.EDQUOT,
          "permission denied": _errno.EACCES, "file write failed": _errno.EIO}


def as_disk_error(exc: BaseException, path: str | Path | None = None) -> OSError | None:
    """``exc`` as an ``OSError(errno, strerror, path)`` when it is a failed write to disk (whatever the
    library that raised it), else ``None``."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return exc if exc.filename or path is None else OSError(exc.errno, exc.strerror, str(path))
    text = str(exc)
    m = _CODE.search(text)
    code = int(m.group(1)) if m else next((c for w, c in _WORDS.items() if w in text.lower()), None)
    if code is None:
        return None
    where = getattr(exc, "filename", None) or path
    return OSError(code, os.strerror(code), None if where is None else str(where))


@contextmanager
def disk_errors(path: str | Path | None = None) -> Iterator[None]:
    """Re-raise a failed write inside the block as the one-line ``OSError`` of :func:`as_disk_error`."""
    try:
        yield
    except Exception as exc:
        mapped = as_disk_error(exc, path)
        if mapped is None or mapped is exc:
            raise
        raise mapped from None


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield ``path.tmp`` to write; rename it onto ``path`` when the block succeeds, remove it when it
    fails (a failed write to disk is re-raised as :func:`as_disk_error`'s ``OSError``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with disk_errors(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass


@contextmanager
def removing(tmp: str | Path) -> Iterator[None]:
    """Remove the temporary file ``tmp`` if the block fails (re-raising a failed write as
    :func:`as_disk_error`'s ``OSError``), for writers that rename it into place themselves."""
    try:
        with disk_errors(tmp):
            yield
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and rename, so readers never see half a file."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """:func:`write_text_atomic` of ``data`` as indented JSON."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` through :func:`replacing` (no half file, one-line disk errors)."""
    from safetensors.torch import save_file

    with replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
