"""Streaming first and second moments of paired activations, in float64.

From ``mean`` and covariance of A and B (and their cross-covariance) the least-squares maps in both
directions are closed-form, and the exact Eq. 3 loss of ANY affine stitch over the same tokens is a
few matrix products (no second data pass). Rows are shifted by the first batch's mean before
accumulating so that near-constant massive dimensions (|x| ~ 1e5) do not lose precision.
"""

from __future__ import annotations

import torch

from ..flops import count_step_flops
from .model import eq3_total

F64 = torch.float64


class Moments:
    """Accumulates ``sum``, ``X^T X``, ``Y^T Y`` and ``X^T Y`` of shifted rows."""

    def __init__(self, d_source: int, d_target: int, device: str | torch.device = "cpu"):
        self.dA, self.dB = int(d_source), int(d_target)
        self.device = torch.device(device)
        self.n = 0
        self.shift_a: torch.Tensor | None = None
        self.shift_b: torch.Tensor | None = None
        z = dict(dtype=F64, device=self.device)
        self.sa = torch.zeros(self.dA, **z)
        self.sb = torch.zeros(self.dB, **z)
        self.aa = torch.zeros(self.dA, self.dA, **z)
        self.bb = torch.zeros(self.dB, self.dB, **z)
        self.ab = torch.zeros(self.dA, self.dB, **z)

    def to(self, device: str | torch.device) -> "Moments":
        """Move the sums (and shifts) to ``device``; returns ``self``. Accumulating on a GPU and solving
        on the CPU is the usual split: the Gram products are the data pass, the solves are ``d x d``."""
        self.device = torch.device(device)
        for name in ("shift_a", "shift_b", "sa", "sb", "aa", "bb", "ab"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(self.device))
        return self

    def update(self, hA: torch.Tensor, hB: torch.Tensor) -> None:
        a, b = hA.detach().to(self.device, F64), hB.detach().to(self.device, F64)
        if a.shape[0] == 0:
            return
        if self.shift_a is None:
            self.shift_a, self.shift_b = a.mean(0), b.mean(0)
        a = a - self.shift_a
        b = b - self.shift_b
        self.n += a.shape[0]
        self.sa += a.sum(0)
        self.sb += b.sum(0)
        self.aa += a.T @ a
        self.bb += b.T @ b
        self.ab += a.T @ b

    def reshift(self, shift_a: torch.Tensor, shift_b: torch.Tensor) -> None:
        """Re-express the sums about new shifts (exact algebra, float64): ``x - s' = (x - s) + d``."""
        if self.shift_a is None or self.n == 0:
            self.shift_a, self.shift_b = shift_a.to(F64).clone(), shift_b.to(F64).clone()
            return
        da, db, n = self.shift_a - shift_a.to(F64), self.shift_b - shift_b.to(F64), self.n
        sa, sb = self.sa.clone(), self.sb.clone()
        self.aa += torch.outer(da, sa) + torch.outer(sa, da) + n * torch.outer(da, da)
        self.bb += torch.outer(db, sb) + torch.outer(sb, db) + n * torch.outer(db, db)
        self.ab += torch.outer(da, sb) + torch.outer(sa, db) + n * torch.outer(da, db)
        self.sa += n * da
        self.sb += n * db
        self.shift_a, self.shift_b = shift_a.to(F64).clone(), shift_b.to(F64).clone()

    def all_reduce(self) -> None:
        """Sum the moments of every rank (torch.distributed; a no-op in one process). All ranks are
        first re-shifted to the shift of the lowest rank that saw rows, then the sums are added."""
        from .. import dist

        rank, world = dist.rank_world()
        if world == 1:
            return
        seen = torch.zeros(world, dtype=F64, device=self.device)
        seen[rank] = float(self.n > 0)
        dist.all_reduce_sum(seen)
        if not bool(seen.any()):
            return
        src = int(torch.nonzero(seen)[0])
        shift = torch.cat([self.shift_a, self.shift_b]) if rank == src \
            else torch.zeros(self.dA + self.dB, dtype=F64, device=self.device)
        dist.broadcast(shift, src)
        self.reshift(shift[:self.dA], shift[self.dA:])
        n = torch.tensor([float(self.n)], dtype=F64, device=self.device)
        for t in (n, self.sa, self.sb, self.aa, self.bb, self.ab):
            dist.all_reduce_sum(t)
        self.n = int(n.item())

    def batch_flops(self, n: int) -> int:
        """FLOPs of one :meth:`update` on ``n`` rows (the three Gram products)."""
        a, b = torch.zeros(n, self.dA, dtype=F64), torch.zeros(n, self.dB, dtype=F64)
        return count_step_flops(lambda: (a.T @ a, b.T @ b, a.T @ b))

    # ------------------------------------------------------------------ statistics
    def stats(self) -> dict[str, torch.Tensor]:
        """Means and (population) covariances: mA, mB, Caa, Cbb, Cab."""
        if self.n == 0:
            raise ValueError("no tokens were accumulated")
        n = self.n
        ma_s, mb_s = self.sa / n, self.sb / n
        return {
            "mA": ma_s + self.shift_a,
            "mB": mb_s + self.shift_b,
            "Caa": self.aa / n - torch.outer(ma_s, ma_s),
            "Cbb": self.bb / n - torch.outer(mb_s, mb_s),
            "Cab": self.ab / n - torch.outer(ma_s, mb_s),
        }

    def loss(self, stitch, alpha: float = 1.0) -> dict[str, float]:
        """Exact Eq. 3 loss (and parts) of ``stitch`` over the accumulated tokens, in float64."""
        tensors = [getattr(stitch, k).detach().to(F64) for k in ("P_up", "b_up", "P_down", "b_down")]
        parts = self.loss_terms(*tensors, alpha=alpha)
        return {k: float(v) for k, v in parts.items()}

    def loss_terms(self, P_up, b_up, P_dn, b_dn, alpha: float = 1.0, stats: dict | None = None) -> dict:
        """Differentiable Eq. 3 parts (float64 tensors) as functions of the four stitch tensors."""
        s = stats or self.stats()
        mA, mB, Caa, Cbb, Cab = s["mA"], s["mB"], s["Caa"], s["Cbb"], s["Cab"]
        parts = {
            "up": affine_mse(mA, Caa, mB, Cbb, Cab, P_up, b_up),
            "down": affine_mse(mB, Cbb, mA, Caa, Cab.T, P_dn, b_dn),
            "aba": affine_mse(mA, Caa, mA, Caa, Caa, P_up @ P_dn, b_up @ P_dn + b_dn),
            "bab": affine_mse(mB, Cbb, mB, Cbb, Cbb, P_dn @ P_up, b_dn @ P_up + b_up),
        }
        parts["total"] = eq3_total(parts, alpha)
        return parts


def affine_mse(mx, Cxx, my, Cyy, Cxy, M, c) -> torch.Tensor:
    """Mean over elements of ``(y - (x @ M + c))^2`` from moments of x and y (a 0-d tensor)."""
    resid_mean = my - (mx @ M + c)
    centred = torch.trace(Cyy) - 2 * (M * Cxy).sum() + ((Cxx @ M) * M).sum()
    return (centred + resid_mean.pow(2).sum()) / my.shape[0]
