"""Where the transferred SAE's reconstruction error on B comes from.

The transferred SAE is ``T_up o SAE_A o T_down``, so on an activation ``h`` of B its error splits
exactly into the stitch's round-trip error and the source SAE's error mapped up:

    T_up(SAE_A(T_down(h))) - h = [T_up(T_down(h)) - h] + [SAE_A(a) - a] @ P_up,   a = T_down(h)

FVU on B and FVU on A are normalised by different variances, and ``a`` is not a real activation of
A (a regression onto A's space carries only part of A's variance), so the transferred SAE's FVU on B
can come out *below* the source SAE's FVU on A. These numbers say which term dominates.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from stitchplug.api import ReconAccumulator


def _sae(sae: Any, x: torch.Tensor) -> torch.Tensor:
    return sae.decode(sae.encode(x.to(sae.dtype))).to(torch.float64)


@torch.no_grad()
def transfer_error_decomposition(source_sae: Any, transferred_sae: Any, stitch: Any,
                                 batches_b: Iterable[torch.Tensor], massive_b: list[int],
                                 massive_a: list[int] = ()) -> dict:
    """FVU on B of: the transferred SAE, the round trip alone, the mapped-up SAE error alone; and the
    source SAE's FVU on the mapped inputs ``a = T_down(h)`` in A's space, plus their variance share."""
    P_up, b_up = stitch.P_up.double(), stitch.b_up.double()
    P_down, b_down = stitch.P_down.double(), stitch.b_down.double()
    acc = None
    var_a = None
    for h in batches_b:
        h = torch.as_tensor(h).reshape(-1, P_down.shape[0]).double()
        a = h @ P_down + b_down
        sae_a = _sae(source_sae, a)
        if acc is None:
            acc = {"transferred": ReconAccumulator(h.shape[1], massive_b),
                   "round_trip_only": ReconAccumulator(h.shape[1], massive_b),
                   "sae_error_only": ReconAccumulator(h.shape[1], massive_b),
                   "source_sae_on_mapped_inputs": ReconAccumulator(a.shape[1], list(massive_a))}
            var_a = [0, torch.zeros(a.shape[1], dtype=torch.float64), torch.zeros(a.shape[1], dtype=torch.float64)]
        round_trip = a @ P_up + b_up
        acc["transferred"].update(h, _sae(transferred_sae, h))
        acc["round_trip_only"].update(h, round_trip)
        acc["sae_error_only"].update(h, h + (sae_a - a) @ P_up)
        acc["source_sae_on_mapped_inputs"].update(a, sae_a)
        var_a[0] += a.shape[0]
        var_a[1] += a.sum(0)
        var_a[2] += a.pow(2).sum(0)
    if acc is None:
        return {}
    out = {}
    for k, v in acc.items():
        r = v.result()
        out[k] = {m: r[m] for m in ("fvu", "fvu_excl_massive", "fvu_per_dim")}
    n, s, s2 = var_a
    out["mapped_input_variance"] = float((s2 - s.pow(2) / n).sum() / max(n - 1, 1))
    return out
