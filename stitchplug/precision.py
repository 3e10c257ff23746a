"""Matmul precision options that labs expect on GPUs, scoped to the training loops that ask for them.

TF32 (``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``) makes float32
matmuls on Ampere-or-newer GPUs run on tensor cores with a 10-bit mantissa: the SAE trainer ran
2.25x faster with it on an H200 (docs/scale.md). The flags are process-wide in PyTorch, so the
project never sets them globally: :func:`tf32_loop` turns them on only while a training loop runs
(the SAE trainer with ``sae.allow_tf32``, the stitch's Adam solver with ``stitch.allow_tf32``), and
the cache's forwards, the closed-form solve and every evaluation keep full float32.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")


def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


@contextmanager
def tf32(enabled: bool, device) -> Iterator[None]:
    """Allow TF32 matmuls (and cuDNN convolutions) inside the block when ``enabled`` and ``device`` is a
    CUDA device; restore the previous flags on exit. On the CPU (or when not ``enabled``) this is a
    no-op: TF32 is a CUDA tensor-core format, and CPU float32 matmuls are unchanged by these flags."""
    if not (enabled and _is_cuda(device)):
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def tf32_loop(items: Iterable[T], enabled: bool, device) -> Iterator[T]:
    """``items``, with TF32 allowed (as :func:`tf32`) while the loop over them runs, body included:
    ``for batch in tf32_loop(batches, cfg.allow_tf32, device): step(batch)``. A no-op on the CPU.
    The flags are restored when the loop ends, breaks or raises."""
    with tf32(enabled, device):
        yield from items
