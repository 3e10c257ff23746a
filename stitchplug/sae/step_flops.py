"""FLOPs of one training step of the TopK SAE trainer (paper App. D accounting).

Activations are cached, so the cost of training is one optimisation step on a dummy batch, counted
with the core counter (:func:`stitchplug.api.count_step_flops`, FlopCounterMode: matrix products
only; elementwise work, TopK, the Adam update and the decoder renormalisation are free), times the
number of steps. The derivation of :func:`analytic_step_flops` is in ``docs/flops.md``: for the dense
TopK step of :mod:`stitchplug.sae.trainer` it is exactly ``10 * B * d * M`` (``12 * B * d * M`` when
the encoder reads ``x - b_dec``, the SAELens default; plus ``6 * B * d * M`` on AuxK steps).
"""

from __future__ import annotations

import torch

from ..flops import count_step_flops

from .topk import TopKSAE, analytic_step_flops  # noqa: F401  (re-exported)
from .trainer import sae_step


def measure_step_flops(d: int, width: int, k: int, batch: int, aux: bool = False,
                       apply_b_dec_to_input: bool = False) -> int:
    """FlopCounterMode count of one forward+backward+Adam step of a fresh dummy SAE of this shape.

    With ``aux=True`` every latent is marked dead so the AuxK branch runs (its cost does not depend
    on how many latents are dead, because the decode is dense).
    """
    gen = torch.Generator().manual_seed(0)
    sae = TopKSAE.random(d, width, k, generator=gen, apply_b_dec_to_input=apply_b_dec_to_input)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(batch, d, generator=gen)
    dead = torch.ones(width, dtype=torch.bool) if aux else None
    return count_step_flops(lambda: sae_step(sae, opt, x, dead_mask=dead, aux_coef=1.0 if aux else 0.0))
