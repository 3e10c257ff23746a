"""FLOP counting shared by the stitch and SAE trainers (paper App. D).

Activations are cached, so training cost is one optimisation step on a dummy batch, counted with
:class:`torch.utils.flop_counter.FlopCounterMode`, times the number of steps.
"""

from __future__ import annotations

from typing import Any, Callable

from torch.utils.flop_counter import FlopCounterMode


def count_step_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of calling ``fn()`` once (forward and, if ``fn`` calls it, backward).

    Only operations FlopCounterMode knows (matmuls, convolutions, attention) are counted; elementwise
    work is ignored, as in the paper's accounting.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())
