"""Fitting a stitch: closed-form least squares, the paper's Adam recipe, or Adam from lstsq.

All solvers read a batch source (see :mod:`stitchplug.stitch.data`). FLOPs follow the paper's
accounting: one step on a dummy batch counted with FlopCounterMode, times the number of steps; the
closed form counts its Gram products per batch the same way and its Cholesky solves analytically.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import StitchConfig
from ..errors import StageError
from ..flops import count_step_flops
from .data import BatchSource, count_tokens
from .model import Stitch
from .moments import F64, Moments


@dataclass
class FitResult:
    """A fitted stitch and what it cost: solver, tokens, steps, flops, wall_s, train losses, history."""

    stitch: Stitch
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- lstsq
def accumulate_moments(source: BatchSource, d_source: int, d_target: int,
                       device: str | torch.device = "cpu") -> tuple[Moments, int]:
    """One streaming pass: float64 moments (Gram products on ``device``, returned on the CPU) and the
    FLOPs of the Gram products."""
    mom = Moments(d_source, d_target, device=device)
    flops, cache = 0, {}
    for hA, hB in source():
        n = int(hA.shape[0])
        if n not in cache:
            cache[n] = mom.batch_flops(n)
        flops += cache[n]
        mom.update(hA, hB)
    mom.all_reduce()  # under torchrun each rank read its share of the rows
    from .. import dist

    flops = int(dist.all_reduce_sum(torch.tensor([flops], dtype=torch.int64))[0])  # every rank's Gram products
    if mom.n == 0:
        raise StageError("no training tokens: the activation source is empty")
    return mom.to("cpu"), flops


def ridge_solve(Cxx: torch.Tensor, Cxy: torch.Tensor, ridge: float) -> tuple[torch.Tensor, int]:
    """Solve ``(Cxx + lam I) P = Cxy`` on standardised inputs; return ``P`` in raw units and the FLOPs.

    Each input dimension is scaled to unit variance first, so a massive dimension (std ~1e4) and an
    ordinary one (std ~1) are equally conditioned and ``ridge`` is relative (the standardised
    matrix has mean diagonal 1). Constant dimensions keep scale 1 and get only the ridge.
    """
    d = Cxx.diagonal().clamp_min(0).sqrt()
    tiny = d.max().clamp_min(1e-300) * 1e-10
    d = torch.where(d > tiny, d, torch.ones_like(d))
    R = Cxx / torch.outer(d, d)
    rhs = Cxy / d[:, None]
    lam = ridge * float(R.diagonal().mean())
    eye = torch.eye(R.shape[0], dtype=R.dtype)
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(R + lam * eye)
        if int(info) == 0:
            break
        lam = max(lam * 10, 1e-12)
    else:
        raise StageError("closed-form stitch: the covariance is singular even with a large ridge term")
    W = torch.cholesky_solve(rhs, L)
    n, k = R.shape[0], rhs.shape[1]
    flops = n ** 3 // 3 + 2 * n * n * k
    return W / d[:, None], flops


def solve_lstsq(mom: Moments, ridge: float) -> tuple[Stitch, int]:
    """Least-squares maps in both directions (with intercepts) from accumulated moments."""
    s = mom.stats()
    P_up, f_up = ridge_solve(s["Caa"], s["Cab"], ridge)
    P_dn, f_dn = ridge_solve(s["Cbb"], s["Cab"].T, ridge)
    b_up = s["mB"] - s["mA"] @ P_up
    b_dn = s["mA"] - s["mB"] @ P_dn
    st = Stitch(mom.dA, mom.dB, seed=None)
    with torch.no_grad():
        st.P_up.copy_(P_up.float())
        st.b_up.copy_(b_up.float())
        st.P_down.copy_(P_dn.float())
        st.b_down.copy_(b_dn.float())
    return st, f_up + f_dn


def refine_on_moments(stitch: Stitch, mom: Moments, alpha: float = 1.0, max_iter: int = 200) -> dict[str, Any]:
    """Minimise the exact Eq. 3 over the accumulated tokens with L-BFGS, no further data pass.

    Beyond the paper: the closed form only solves the two direct terms; from the same moments the
    full objective (round trips included) is a smooth function of the four tensors. Inputs are
    rescaled to unit variance per dimension (``P = diag(1/s) W``) so massive dimensions do not
    make the problem ill-conditioned. Works in float64; returns ``{iters, func_evals, flops, before,
    after}`` (FLOPs: FlopCounterMode count of one loss+gradient evaluation times evaluations).
    """
    s = mom.stats()
    sa = s["Caa"].diagonal().clamp_min(1e-12).sqrt()
    sb = s["Cbb"].diagonal().clamp_min(1e-12).sqrt()
    W_up = (stitch.P_up.detach().to(F64) * sa[:, None]).requires_grad_()
    W_dn = (stitch.P_down.detach().to(F64) * sb[:, None]).requires_grad_()
    b_up = stitch.b_up.detach().to(F64).clone().requires_grad_()
    b_dn = stitch.b_down.detach().to(F64).clone().requires_grad_()
    params = [W_up, b_up, W_dn, b_dn]

    def total():
        return mom.loss_terms(W_up / sa[:, None], b_up, W_dn / sb[:, None], b_dn, alpha, stats=s)["total"]

    with torch.no_grad():
        before = float(total())
    opt = torch.optim.LBFGS(params, lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure():
        opt.zero_grad()
        loss = total()
        loss.backward()
        return loss

    opt.step(closure)
    state = opt.state[opt._params[0]]
    evals = int(state.get("func_evals", 0))
    per_eval = count_step_flops(lambda: total().backward())  # one loss+gradient evaluation
    for p in params:
        p.grad = None
    with torch.no_grad():
        after = float(total())
        if after < before:  # never return something worse than the start
            stitch.P_up.copy_((W_up / sa[:, None]).float())
            stitch.b_up.copy_(b_up.float())
            stitch.P_down.copy_((W_dn / sb[:, None]).float())
            stitch.b_down.copy_(b_dn.float())
    return {"iters": int(state.get("n_iter", 0)), "func_evals": evals, "flops": per_eval * evals,
            "before": before, "after": min(after, before)}


# ----------------------------------------------------------------------------------------- adam
class _Eq3(torch.nn.Module):
    """Eq. 3 as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, stitch: Stitch, alpha: float):
        super().__init__()
        self.stitch, self.alpha = stitch, alpha

    def forward(self, hA, hB):
        return self.stitch.loss(hA, hB, self.alpha)


def stitch_step_flops(d_source: int, d_target: int, batch_size: int, alpha: float = 1.0) -> int:
    """FLOPs of one forward+backward of Eq. 3 (:meth:`Stitch.loss`) on a dummy batch of ``batch_size`` tokens."""
    dummy = Stitch(d_source, d_target, seed=None)
    hA, hB = torch.zeros(batch_size, d_source), torch.zeros(batch_size, d_target)
    return count_step_flops(lambda: dummy.loss(hA, hB, alpha)[0].backward())


def adam_step_flops(stitch: Stitch, batch_size: int, alpha: float) -> int:
    """:func:`stitch_step_flops` for ``stitch``'s widths."""
    return stitch_step_flops(stitch.d_source, stitch.d_target, batch_size, alpha)


def train_adam(stitch: Stitch, source: BatchSource, cfg: StitchConfig, steps_per_epoch: int,
               seed: int = 0, max_steps: int | None = None, log_every: int = 50,
               progress: bool = False, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The paper's recipe: Adam, cosine decay to 0 over all steps, grad-norm clip 1.0, Eq. 3.
    Steps run on ``device``; ``stitch`` is trained in place and left on the CPU."""
    from .. import dist
    from ..precision import tf32_loop

    torch.manual_seed(seed)
    device = torch.device(device)
    stitch.to(device)
    total = steps_per_epoch * cfg.epochs
    loss_fn = lambda a, b: stitch.loss(a, b, cfg.alpha)  # noqa: E731
    if dist.rank_world()[1] > 1:  # DDP: each rank's share of the global batch; gradients are averaged
        from torch.nn.parallel import DistributedDataParallel

        loss_fn = DistributedDataParallel(_Eq3(stitch, cfg.alpha))
    if max_steps is not None:
        total = min(total, int(max_steps))
    opt = torch.optim.Adam(stitch.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))
    history, recent, step, tokens = [], [], 0, 0
    bar = None
    if progress:
        from ..progress import progress as progress_bar
        bar = progress_bar(total=total, desc="stitch adam", unit="step")
    stitch.train()
    while step < total:
        for hA, hB in tf32_loop(source(), getattr(cfg, "allow_tf32", False), device):
            hA, hB = hA.to(device, non_blocking=True), hB.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss, parts = loss_fn(hA, hB)
            if not math.isfinite(parts["total"]):
                raise StageError(f"Adam diverged at step {step} (loss {parts['total']}); try a smaller --stitch-lr")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(stitch.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            tokens += int(hA.shape[0])
            recent.append(parts["total"])
            if step % log_every == 0 or step == total:
                history.append({"step": step, "loss": sum(recent) / len(recent)})
                recent = []
            if bar is not None:
                bar.update(1)
            if step >= total:
                break
    if bar is not None:
        bar.close()
    stitch.cpu().eval()
    tokens = int(dist.all_reduce_sum(torch.tensor([tokens], dtype=torch.int64))[0])  # every rank's share
    return {"steps": step, "tokens_seen": tokens, "history": history}


# ---------------------------------------------------------------------------------------- entry
def fit_stitch(source: BatchSource, d_source: int, d_target: int, cfg: StitchConfig | None = None,
               seed: int = 0, max_steps: int | None = None, progress: bool = False,
               refine_iters: int = 0, device: str | torch.device = "cpu") -> FitResult:
    """Fit a stitch with ``cfg.solver`` (lstsq, adam or lstsq+adam) on ``source``.

    ``device`` runs the data passes there (the Gram products, the Adam steps); the closed-form
    solve and the L-BFGS refinement work on ``d x d`` moments on the CPU; the stitch returned is on the CPU.

    ``refine_iters > 0`` (lstsq solvers only) follows the closed form with that many L-BFGS
    iterations on the exact Eq. 3 from the moments (:func:`refine_on_moments`), before any Adam.

    ``info`` holds solver, train_tokens, steps, flops, wall_s and train_loss (exact Eq. 3 over
    the training tokens when the moments were accumulated, else the mean of the last logged steps).
    """
    cfg = cfg or StitchConfig()
    t0 = time.perf_counter()
    info: dict[str, Any] = {"solver": cfg.solver, "alpha": cfg.alpha, "seed": seed}
    mom = None
    flops = 0
    if cfg.solver in ("lstsq", "lstsq+adam"):
        mom, f_acc = accumulate_moments(source, d_source, d_target, device=device)
        stitch, f_solve = solve_lstsq(mom, cfg.ridge)
        flops += f_acc + f_solve
        info.update(ridge=cfg.ridge, train_tokens=mom.n, lstsq_flops=f_acc + f_solve,
                    lstsq_train_loss=mom.loss(stitch, cfg.alpha))
        if refine_iters > 0:
            info["refine"] = refine_on_moments(stitch, mom, cfg.alpha, refine_iters)
            info["solver"] = cfg.solver.replace("lstsq", "lstsq+lbfgs", 1)
            flops += info["refine"]["flops"]
        info["lstsq_wall_s"] = time.perf_counter() - t0
        n_tokens = mom.n
    else:
        stitch = Stitch(d_source, d_target, seed=seed)
        n_tokens = count_tokens(source)
        info["train_tokens"] = n_tokens
    if cfg.solver in ("adam", "lstsq+adam"):
        steps_per_epoch = max(1, math.ceil(n_tokens / cfg.batch_size))
        run = train_adam(stitch, source, cfg, steps_per_epoch, seed=seed, max_steps=max_steps, progress=progress,
                         device=device)
        step_flops = adam_step_flops(stitch, cfg.batch_size, cfg.alpha)
        flops += step_flops * run["steps"]
        info.update(lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size, steps=run["steps"],
                    tokens_seen=run["tokens_seen"], adam_step_flops=step_flops, history=run["history"])
        if run["history"]:
            info["train_loss_last_steps"] = run["history"][-1]["loss"]
    else:
        info["steps"] = 0
    if mom is not None:
        info["train_loss"] = mom.loss(stitch, cfg.alpha)
    info["flops"] = int(flops)
    info["wall_s"] = time.perf_counter() - t0
    stitch.meta.update({k: v for k, v in info.items() if k != "history"})
    return FitResult(stitch, info)
