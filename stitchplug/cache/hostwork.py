"""A shard's host work on a small thread pool (``cache.host_workers``): gather, pack, digest.

:meth:`~stitchplug.cache.writer._Writer.store_shard` gathers the aligned rows of every cached layer,
packs them to the storage dtype (float -> bfloat16 bits, float16 or float32) and digests them for
:mod:`~stitchplug.cache.integrity`. Here each layer is cut into chunks of whole windows (about
:data:`CHUNK_ROWS` rows) that pool threads gather and pack straight into the layer's output array
(numpy's copies, ``isfinite`` and torch's bfloat16 rounding release the GIL), and each layer's digest is
computed from those in-memory bytes (``hashlib`` releases the GIL too) while the calling thread writes
the layer to the HDF5 file, instead of re-reading the file afterwards.

Nothing here changes a byte: packing is elementwise (a chunk packs exactly as the whole layer would),
the output array is what :func:`~stitchplug.cache.format.store` returns for the whole layer, and its
digest is :func:`~stitchplug.cache.integrity.stamp`'s (BLAKE2b over the dataset's bytes in row order,
which is what h5py reads back). Errors are those of the single-threaded path: a layer that
:func:`~stitchplug.cache.format.store` would refuse is gathered again and handed to it, so the same
one-line :class:`~stitchplug.errors.CacheError` is raised, for the first such layer in writing order.
``host_workers`` 1 runs every task in the calling thread, in order.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import CacheError
from .format import FLOAT16_MAX, store

HOST_WORKERS = 2
"""Default ``cache.host_workers``."""
CHUNK_ROWS = 8192
"""Rows per pool task (whole windows, so a chunk may be a window longer)."""
_STORED = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


def digest(a: np.ndarray) -> str:
    """:mod:`~stitchplug.cache.integrity`'s digest of a numeric dataset written from ``a`` (``ndim >= 1``)."""
    a = np.ascontiguousarray(a)
    if a.ndim == 0 or a.dtype.kind not in "iuf":
        raise ValueError(f"in-memory digests are for numeric arrays, not {a.dtype} of shape {a.shape}")
    h = hashlib.blake2b(digest_size=16)
    h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


class _Done:
    """A finished call, as a :class:`~concurrent.futures.Future` would report it (``host_workers`` 1)."""

    def __init__(self, fn: Callable, args: tuple):
        self._value, self._error = None, None
        try:
            self._value = fn(*args)
        except BaseException as exc:  # noqa: BLE001 (raised by result(), in order, like a future's)
            self._error = exc

    def result(self):
        if self._error is not None:
            raise self._error
        return self._value


class HostPool:
    """``workers`` threads for the host work (1: none, every call runs at once in the caller).
    Close it (or use it as a context manager) to stop its threads."""

    def __init__(self, workers: int = HOST_WORKERS, name: str = "stitchplug-cache-host"):
        if int(workers) < 1:
            raise ValueError(f"host workers must be >= 1, not {workers}")
        self.workers = int(workers)
        self._ex = ThreadPoolExecutor(self.workers, thread_name_prefix=name) if self.workers > 1 else None

    def submit(self, fn: Callable, *args) -> "Future | _Done":
        return _Done(fn, args) if self._ex is None else self._ex.submit(fn, *args)

    def close(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "HostPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _plain(a, idx, dtype) -> bool:
    """``a[idx]`` (rows) is exactly ``np.take(a, idx, axis=0, mode="clip")``."""
    return (isinstance(a, np.ndarray) and a.ndim == 2 and a.dtype == dtype and isinstance(idx, np.ndarray)
            and idx.ndim == 1 and idx.dtype.kind in "iu" and (not len(idx) or (idx.min() >= 0 and idx.max() < len(a))))


Piece = tuple[np.ndarray, np.ndarray]
"""One window's contribution to a layer: ``(activations [len, d], row indices kept)``."""


class PackedLayer:
    """One layer's rows gathered from ``pieces`` and packed to ``dtype`` by ``pool`` (started at once);
    :meth:`array` waits for them and starts the digest, :meth:`digest` waits for that."""

    def __init__(self, pool: HostPool, pieces: Sequence[Piece], d: int, dtype: str, what: str):
        self.pieces, self.dtype, self.what = list(pieces), dtype, what
        n = sum(len(idx) for _, idx in self.pieces)
        d = int(self.pieces[0][0].shape[1]) if self.pieces else int(d)
        # the dtype np.concatenate would give the gathered rows (float32 from the forwards)
        self.src = np.result_type(*[a.dtype for a, _ in self.pieces]) if self.pieces else np.dtype(np.float32)
        self.out = np.empty((n, d), _STORED[dtype])
        self.pool = pool
        self._chunks, self._digest = [], None
        start, row, group = 0, 0, []
        for piece in self.pieces:
            group.append(piece)
            row += len(piece[1])
            if row - start >= CHUNK_ROWS:
                self._chunks.append(pool.submit(self._pack, group, start, row))
                start, group = row, []
        if group:
            self._chunks.append(pool.submit(self._pack, group, start, row))

    def _pack(self, group: list[Piece], r0: int, r1: int) -> bool:
        """Gather rows ``r0:r1`` and pack them into ``self.out``; ``False`` if :func:`store` would refuse them."""
        direct = self.dtype == "float32" and self.src == np.float32
        buf = self.out[r0:r1] if direct else np.empty((r1 - r0, self.out.shape[1]), self.src)
        r = r0
        for a, idx in group:
            k = len(idx)
            if _plain(a, idx, buf.dtype):  # one copy, no temporary (the indices are checked in range)
                np.take(a, idx, axis=0, out=buf[r - r0:r - r0 + k], mode="clip")
            else:
                buf[r - r0:r - r0 + k] = a[idx]
            r += k
        if not np.isfinite(buf).all():
            return False
        if self.dtype == "float16":
            if float(np.abs(buf).max(initial=0.0)) > FLOAT16_MAX:
                return False
            self.out[r0:r1] = buf.astype(np.float16)
        elif self.dtype == "bfloat16":  # bfloat16_bits, in place: the same float32 -> bfloat16 rounding
            x = buf if buf.dtype == np.float32 else buf.astype(np.float32)
            torch.from_numpy(self.out[r0:r1].view(np.int16)).view(torch.bfloat16).copy_(torch.from_numpy(x))
        elif not direct:
            self.out[r0:r1] = buf.astype(np.float32)
        return True

    def array(self) -> np.ndarray:
        """The packed layer (as :func:`store` returns it); raises :func:`store`'s error if it refuses it."""
        if self._digest is None:
            ok = [c.result() for c in self._chunks]
            if not all(ok):
                rows = np.concatenate([a[idx] for a, idx in self.pieces])
                store(rows, self.dtype, self.what)  # raises the single-threaded path's message
                raise CacheError(f"{self.what} cannot be stored as {self.dtype}")
            self._digest = self.pool.submit(digest, self.out)
        return self.out

    def digest(self) -> str:
        self.array()
        return self._digest.result()
