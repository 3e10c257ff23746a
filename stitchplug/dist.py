"""``torch.distributed`` glue for running under ``torchrun`` (one process per rank).

Everything here is a no-op in a single process: ``rank_world()`` is ``(0, 1)`` unless a process group
is initialised. Commands call :func:`init_from_env` first; it starts a group only when torchrun set
``WORLD_SIZE > 1`` (``gloo`` on CPU; on CUDA ``nccl`` for GPU tensors and ``gloo`` for CPU tensors,
each rank on ``cuda:LOCAL_RANK``).
``STITCHPLUG_DIST_TIMEOUT`` (seconds, default 6 h) bounds how long a rank waits at a barrier for
the slowest rank (the cache's ranks finish their shards at different times).

Two helpers keep a multi-rank command from hanging on a decision or an error only rank 0 sees:
:func:`on_main` runs a function on rank 0 and hands every rank its result *or its error* (so a
refusal on rank 0 ends every rank with the same one-line error instead of leaving them waiting at
the next collective), and :func:`solo` marks code that rank 0 runs alone after the other ranks have
left: inside it this process is a world of one (``rank_world() == (0, 1)``, collectives are no-ops,
nothing wraps itself in DDP), exactly as in a single-process run.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist

from .errors import StitchplugError


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def backend_for(device: str) -> str:
    """The process-group backend for ``device``. On GPUs, CPU tensors (the stitch's float64 moments,
    the SAE's first-batch sums) still go through gloo: a plain ``nccl`` group refuses them ("No backend
    type associated with device type cpu", seen on an H200 with bench/gpu.py)."""
    return "cpu:gloo,cuda:nccl" if device == "cuda" else "gloo"


def init_from_env(device: str = "cpu") -> tuple[int, int]:
    """Join the torchrun process group if there is one; returns ``(rank, world_size)``."""
    if env_world_size() > 1 and dist.is_available() and not dist.is_initialized():
        backend = backend_for(device)
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = timedelta(seconds=float(os.environ.get("STITCHPLUG_DIST_TIMEOUT", 6 * 3600)))
        dist.init_process_group(backend, timeout=timeout)
    return rank_world()


_SOLO = False


def rank_world() -> tuple[int, int]:
    if _SOLO:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (returns ``t``); identity in one process."""
    if rank_world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if rank_world()[1] > 1:
        dist.broadcast(t, src)
    return t


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (picklable objects)."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


class RankError(StitchplugError):
    """Raised on the other ranks when a rank failed with an error that is not a one-line
    :class:`~stitchplug.errors.StitchplugError` (those are re-raised as they are); the failing rank
    shows the traceback, the others one line naming it."""


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0; every rank returns its result or raises its error.

    Rank 0 broadcasts ``("ok", result)`` or ``("error", exception)`` after ``fn`` (results must be
    picklable); a :class:`~stitchplug.errors.StitchplugError` is re-raised as is on every rank (same
    message, same exit code), anything else as a :class:`RankError` naming it. ``KeyboardInterrupt``
    is not broadcast: Ctrl-C reaches every rank (and torchrun stops the rest).
    In one process (or inside :func:`solo`) this is just ``fn()``.
    """
    rank, world = rank_world()
    if world == 1:
        return fn()
    if rank == 0:
        try:
            out = fn()
        except Exception as exc:
            broadcast_object(("error", _portable(exc)))
            raise
        broadcast_object(("ok", out))
        return out
    status, value = broadcast_object(None)
    if status == "error":
        raise value
    return value


def on_all(fn: Callable[[], Any]) -> Any:
    """``fn()`` on every rank, then agree: if it raised on any rank, every rank raises (the lowest
    failing rank's error, as :func:`on_main` does), so no rank walks on into a collective alone."""
    rank, world = rank_world()
    if world == 1:
        return fn()
    try:
        out, err = fn(), None
    except Exception as exc:
        out, err = None, exc
    statuses = [None] * world
    dist.all_gather_object(statuses, None if err is None else _portable(err))
    if err is not None:
        raise err
    first = next((e for e in statuses if e is not None), None)
    if first is not None:
        raise first
    return out


def _portable(exc: Exception) -> Exception:
    """``exc`` itself if it is a one-line StitchplugError that pickles, else a RankError naming it."""
    import pickle

    if isinstance(exc, StitchplugError):
        try:
            return pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - an exception class with a custom __init__
            out = StitchplugError(str(exc))
            out.exit_code = exc.exit_code
            return out
    return RankError(f"rank {rank_world()[0]} failed: {type(exc).__name__}: {exc}".splitlines()[0])


@contextmanager
def solo():
    """Rank 0 alone (the other ranks have left): a world of one until the block ends.

    Only rank 0 may enter; code inside sees ``rank_world() == (0, 1)``, so readers return whole
    batches, trainers do not wrap themselves in DDP and :func:`barrier`/:func:`all_reduce_sum` are
    no-ops: rank 0 computes exactly what a single process would.
    """
    global _SOLO
    if rank_world()[0] != 0:
        raise RuntimeError("only rank 0 may run alone (dist.solo)")
    prev, _SOLO = _SOLO, True
    try:
        yield
    finally:
        _SOLO = prev
