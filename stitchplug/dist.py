"""``torch.distributed`` glue for running under ``torchrun`` (one process per rank).

Everything here is a no-op in a single process: ``rank_world()`` is ``(0, 1)`` unless a process group
is initialised. Commands call :func:`init_from_env` first; it starts a group only when torchrun set
``WORLD_SIZE > 1`` (``gloo`` on CPU; on CUDA ``nccl`` for GPU tensors and ``gloo`` for CPU tensors,
each rank on ``cuda:LOCAL_RANK``).
``STITCHPLUG_DIST_TIMEOUT`` (seconds, default 6 h) bounds how long a rank waits at a barrier for
the slowest rank (the cache's ranks finish their shards at different times).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


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


def rank_world() -> tuple[int, int]:
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
