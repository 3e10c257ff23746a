"""The project's one TopK SAE trainer (source SAE on A, both init-experiment arms, native SAEs on B).

Plain torch, so every SAE the project trains follows the same, fully visible recipe:

- ``f(x) = ReLU(TopK(x' @ W_enc + b_enc))`` with ``x' = x - b_dec`` (``apply_b_dec_to_input``, the
  SAELens default), ``x_hat = f(x) @ W_dec + b_dec`` (dense decode: the paper's FLOPs accounting);
- init: random unit-norm decoder rows, ``W_enc = W_dec^T``, ``b_enc = 0``, ``b_dec`` = the mean of the
  first training batches (``b_dec_init="mean"``; the residual stream's massive dimensions have a large
  mean, which a zero ``b_dec`` spends the first steps learning);
- loss ``sum_d (x_hat - x)^2`` averaged over rows, constant-lr Adam, decoder rows renormalised to unit
  norm after every step.

Options beyond the plain recipe, each off by default and measured in docs/sae.md: AuxK on dead
latents (``aux_k_coef``, Gao et al. 2024), resampling of dead latents (``resample_every``,
:mod:`stitchplug.sae.resample`), learning rate scaled as ``1/sqrt(width)``
(``lr_width_ref``), activations scaled to mean norm ``sqrt(d_in)`` during training and the scale
folded back into the saved weights (``normalize="expected_norm"``), gradient-norm clipping.

Why not sae-lens's ``SAETrainer`` (what the project used until issue 9): its ``TopKTrainingSAE``
starts the decoder at row norm 0.1 (``decoder_init_norm``) with ``rescale_acts_by_decoder_norm``, so
Adam's per-element steps of size ``lr`` move 0.1-norm decoder rows about ten times faster in
direction than unit-norm rows, and the encoder starts ten times too small; at the project's budgets
this left 30-70% of the latents dead (measured in docs/sae.md).
"""

from __future__ import annotations

import collections
import itertools
import math
import time
from typing import Any, Callable, Iterable, Iterator

import torch
from sae_lens import SAE, TopKSAE as SaeLensTopK, TopKSAEConfig
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .. import dist
from ..errors import StageError
from ..precision import tf32_loop
from .resample import resample_dead
from .config import TrainerConfig  # noqa: F401  (re-exported: the one SAE config)
from .topk import WARM_STARTS, TopKSAE, analytic_step_flops, fold_decoder_norms, warm_start  # noqa: F401  (re-exported: the module the trainer trains)


# --------------------------------------------------------------------------- one step


def sae_step(sae: TopKSAE, opt: torch.optim.Optimizer, x: torch.Tensor,
             dead_mask: torch.Tensor | None = None, aux_coef: float = 0.0,
             clip_grad_norm: float | None = None, forward: nn.Module | None = None,
             sparse: bool = False) -> tuple[float, bool, torch.Tensor]:
    """One Adam step on ``sum_d (x_hat - x)^2`` averaged over rows, plus AuxK when ``dead_mask`` marks
    dead latents and ``aux_coef > 0`` (``k_aux = d/2``, scaled by ``min(n_dead / k_aux, 1)`` as in
    sae-lens); then renormalise the decoder rows.

    Returns ``(reconstruction loss, aux_active, fired)`` where ``fired`` marks latents active in this
    batch. ``forward`` (a ``DistributedDataParallel`` around ``sae``) runs the forward instead, so
    gradients are averaged over ranks before the step. ``sparse``: the k-row forward/backward
    (:meth:`TopKSAE.forward_sparse`) on steps without AuxK (an AuxK step needs the dense
    pre-activation and runs dense).
    """
    want_aux = aux_coef > 0 and dead_mask is not None and int(dead_mask.sum()) > 0
    if sparse and not want_aux:
        x_hat, vals, idx = (forward or sae)(x, sparse=True)
        fired = torch.zeros(sae.width, dtype=torch.bool, device=x.device)
        fired[idx[vals.detach() > 0]] = True
    else:
        x_hat, z, pre = (forward or sae)(x)
        fired = (z > 0).any(0)
    recon = (x_hat - x).pow(2).sum(-1).mean()
    loss = recon
    if want_aux:
        num_dead = int(dead_mask.sum())
        k_aux = max(1, x.shape[-1] // 2)
        scale = min(num_dead / k_aux, 1.0)
        k_aux = min(k_aux, num_dead)
        residual = (x - x_hat).detach()
        masked = torch.where(dead_mask[None], pre, torch.full_like(pre, -torch.inf))
        z_aux = sae.topk(masked, k_aux)
        loss = loss + aux_coef * scale * (z_aux @ sae.decoder() - residual).pow(2).sum(-1).mean()
    _update(sae, opt, loss, clip_grad_norm)
    return float(recon.detach()), want_aux, fired


def _update(sae: TopKSAE, opt: torch.optim.Optimizer, loss: torch.Tensor, clip_grad_norm: float | None) -> None:
    """The tail every step shares, whichever decode: backward, optional gradient clipping, the Adam
    step, then the decoder rows renormalised."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(sae.parameters(), clip_grad_norm)
    opt.step()
    sae.normalise_decoder_()


class TopKTrainer:
    """Step-wise training of a :class:`TopKSAE` (the init experiment drives it step by step).

    ``step(x)`` returns ``{"mse", "ev", "aux_active"}`` on the training batch. The FLOPs of a step
    are counted with ``FlopCounterMode`` on the first plain step and on the first AuxK step, and
    every later step of the same kind is charged the same count (the step's matmuls have fixed
    shapes); ``flops`` is their running total. With ``decode="sparse"`` a plain step is charged the
    dense step's analytic FLOPs (the paper's accounting, docs/flops.md), not what the sparse step ran.

    Under torchrun (a process group of ``world_size > 1``) the SAE is wrapped in
    ``DistributedDataParallel``: each rank steps on its share of the global batch, gradients are
    averaged (equal shares: the global batch's gradient), and the latents that fired are OR-ed over
    ranks so every rank keeps the same dead-latent mask (AuxK); the ``mse`` and ``ev`` a step returns
    are the global batch's (one small all-reduce per step). ``flops`` counts this rank's share.
    """

    def __init__(self, sae: TopKSAE, lr: float, aux_k_coef: float = 0.0, dead_window: int = 200,
                 clip_grad_norm: float | None = None, decode: str = "dense", resample_every: int | None = None,
                 resample_pool: int = 8, seed: int = 0):
        if decode not in ("dense", "sparse"):
            raise StageError(f"decode must be 'dense' or 'sparse', not {decode!r}")
        if resample_every is not None and dist.rank_world()[1] > 1:
            raise StageError("resampling dead latents (resample_every) runs in one process only, not under torchrun")
        self.sparse = decode == "sparse"
        self.sae = sae
        self.opt = torch.optim.Adam(sae.parameters(), lr=lr)
        self.aux_k_coef = float(aux_k_coef)
        self.dead_window = int(dead_window)
        self.clip_grad_norm = clip_grad_norm
        self.since_fired = torch.zeros(sae.width, dtype=torch.long, device=sae.W_dec.device)
        self.steps = 0
        self.flops = 0
        self.step_flops: dict[bool, int] = {}
        self.resample_every = resample_every
        self.pool: collections.deque = collections.deque(maxlen=max(1, int(resample_pool)))
        self.resample_gen = torch.Generator().manual_seed(seed)
        self.resampled = 0
        self.resample_flops = 0
        self.forward = None
        if dist.rank_world()[1] > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(sae)

    def dead_mask(self) -> torch.Tensor:
        return self.since_fired >= self.dead_window

    def step(self, x: torch.Tensor) -> dict:
        dead = self.dead_mask() if self.aux_k_coef > 0 else None
        will_aux = dead is not None and bool(dead.any())
        if self.sparse and not will_aux and False not in self.step_flops:
            self.step_flops[False] = analytic_step_flops(x.shape[0], self.sae.d, self.sae.width,
                                                         apply_b_dec_to_input=self.sae.apply_b_dec_to_input)
        counter = FlopCounterMode(display=False) if will_aux not in self.step_flops else None
        if counter is not None:
            with counter:
                loss, aux_active, fired = sae_step(self.sae, self.opt, x, dead, self.aux_k_coef, self.clip_grad_norm,
                                                   self.forward, self.sparse)
            self.step_flops[aux_active] = int(counter.get_total_flops())
        else:
            loss, aux_active, fired = sae_step(self.sae, self.opt, x, dead, self.aux_k_coef, self.clip_grad_norm,
                                               self.forward, self.sparse)
        if self.forward is not None:  # one all-reduce: the latents fired, the global batch's loss and variance
            with torch.no_grad():
                xd, n = x.double(), x.shape[0]
                packed = dist.all_reduce_sum(torch.cat([
                    fired.double(), torch.tensor([loss * n, float(xd.pow(2).sum()), n], dtype=torch.float64,
                                                 device=x.device), xd.sum(0)]))
            w = fired.numel()
            fired, rows = packed[:w] > 0, packed[w + 2]
            loss = float(packed[w] / rows)
            var = max(float(packed[w + 1] / rows - (packed[w + 3:] / rows).pow(2).sum()), 1e-12)
        else:
            with torch.no_grad():
                var = float((x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12))
        self.flops += self.step_flops[aux_active]
        self.since_fired = torch.where(fired, torch.zeros_like(self.since_fired), self.since_fired + 1)
        self.steps += 1
        info = {"mse": loss / x.shape[-1], "ev": 1.0 - loss / var, "aux_active": aux_active,
                "resampled": 0, "extra_flops": 0}
        if self.resample_every is not None:
            self.pool.append(x.detach())
            if self.steps % self.resample_every == 0:
                latents, flops = resample_dead(self.sae, self.opt, torch.cat(list(self.pool)), self.dead_mask(),
                                               self.resample_gen)
                self.since_fired[latents] = 0
                self.flops += flops
                self.resampled += int(latents.numel())
                self.resample_flops += flops
                info.update(resampled=int(latents.numel()), extra_flops=flops)
        return info

    def dead_fraction(self) -> float:
        """Share of latents that have not fired in the last ``min(dead_window, steps)`` steps."""
        return float((self.since_fired >= min(self.dead_window, max(self.steps, 1))).float().mean())


# --------------------------------------------------------------------------- the public function


def rebatch(batches: Iterable[torch.Tensor], batch_size: int, d_in: int, max_tokens: int | None = None,
            restart: bool = True) -> Iterator[torch.Tensor]:
    """Yield float32 ``[batch_size, d_in]`` tensors from batches of any size.

    If ``batches`` is re-iterable (not a one-shot iterator) and ``restart`` is true it is walked again
    when exhausted (another epoch); a one-shot iterator simply ends. Stops after ``max_tokens``.
    """
    one_shot = iter(batches) is batches
    buf: list[torch.Tensor] = []
    have = sent = 0
    while True:
        got_any = False
        for b in batches:
            b = torch.as_tensor(b).reshape(-1, b.shape[-1])
            if b.shape[-1] != d_in:
                raise StageError(f"activation batch has width {b.shape[-1]}, the SAE expects d_in={d_in}")
            got_any = True
            buf.append(b.float())
            have += b.shape[0]
            while have >= batch_size:
                cat = torch.cat(buf)
                out, rest = cat[:batch_size], cat[batch_size:]
                buf, have = ([rest] if rest.shape[0] else []), rest.shape[0]
                yield out
                sent += batch_size
                if max_tokens is not None and sent >= max_tokens:
                    return
        if one_shot or not restart or not got_any:
            return


@torch.no_grad()
def to_saelens(sae: TopKSAE, scale: float = 1.0, model_name: str | None = None,
               hook_name: str | None = None) -> SAE:
    """The sae-lens inference ``TopKSAE`` computing the same function on *unscaled* inputs.

    ``scale`` is the factor the activations were multiplied by during training; it is folded back:
    ``b_dec /= s``, ``b_enc /= s`` (the codes shrink by ``s``, which keeps the TopK selection).
    """
    cfg = TopKSAEConfig(d_in=sae.d, d_sae=sae.width, k=sae.k, dtype="float32", device="cpu",
                        apply_b_dec_to_input=sae.apply_b_dec_to_input, normalize_activations="none",
                        rescale_acts_by_decoder_norm=False)
    cfg.metadata.model_name = model_name
    cfg.metadata.hook_name = hook_name
    out = SaeLensTopK(cfg)
    w = {n: t.cpu() for n, t in sae.plain_weights().items()}
    out.load_state_dict({"W_enc": w["W_enc"], "b_enc": w["b_enc"] / scale, "W_dec": w["W_dec"], "b_dec": w["b_dec"] / scale})
    return out


def _as_config(cfg: Any, overrides: dict) -> TrainerConfig:
    if cfg is None:
        base: dict = {}
    elif isinstance(cfg, TrainerConfig):
        base = cfg.model_dump()
    elif isinstance(cfg, dict):
        base = dict(cfg)
    else:
        raise StageError(f"SAE training takes a TrainerConfig (or the sae section, which extends it) or a dict, "
                         f"not a {type(cfg).__name__}")
    base.update({k_: v for k_, v in overrides.items() if v is not None})
    try:
        return TrainerConfig(**base)
    except ValueError as exc:
        raise StageError(f"invalid SAE training config: {exc}".splitlines()[0] + " "
                         + " ".join(str(exc).splitlines()[1:3])) from None


def train_topk_sae(batches: Iterable[torch.Tensor], d_in: int, cfg: Any = None, *, seed: int = 0,
                   device: str = "cpu", model_name: str | None = None, hook_name: str | None = None,
                   init: TopKSAE | None = None, on_step: Callable[[int, dict], None] | None = None,
                   curve_points: int = 50, progress: bool = True, **overrides: Any) -> tuple[SAE, dict[str, Any]]:
    """Train a TopK SAE on ``batches`` (``[n, d_in]`` tensors of any ``n``; a re-iterable is cycled
    until ``cfg.train_tokens`` tokens were seen).

    ``cfg`` is a :class:`TrainerConfig`, a dict, or any object with the same field names (the run's
    ``SAEConfig``); keyword ``overrides`` (``width=``, ``k=``, ``lr=``, ...) replace its fields.
    ``init`` starts from given weights instead of the random init (its width and k win), prepared by
    the ``warm_start`` option (:func:`stitchplug.sae.topk.warm_start`).
    ``on_step(step, info)`` is called after every step (``info``: mse, ev, aux_active, flops).

    Under torchrun each rank passes its own share of the activations; ``batch_size`` and
    ``train_tokens`` stay global (each rank steps on ``batch_size / world_size`` rows, which must
    divide evenly), the decoder-bias mean and the ``expected_norm`` scale are all-reduced, and the
    gradients averaged (:class:`TopKTrainer`), so N ranks train the SAE one process would on the
    union of their batches; the summary's losses and FLOPs are the global batch's and all ranks'.

    Returns ``(sae, summary)``: a sae-lens inference ``TopKSAE`` (save it with
    :func:`stitchplug.sae.io.save_sae`; ``SAE.load_from_disk`` reads it back) carrying the summary in
    ``sae.cfg.metadata.stitchplug_training``, and the JSON-ready summary (steps, tokens, seconds,
    ``train_flops``, first/final MSE and explained variance, a subsampled curve, dead latents).
    """
    c = _as_config(cfg, overrides)
    if c.train_tokens < c.batch_size:
        raise StageError(f"SAE train_tokens ({c.train_tokens}) is smaller than one batch ({c.batch_size})")
    if not 0 < c.k <= c.width:
        raise StageError(f"SAE k={c.k} must be between 1 and the width {c.width}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    total = c.train_tokens // c.batch_size
    world = dist.rank_world()[1]
    if c.batch_size % world:
        raise StageError(f"SAE batch_size {c.batch_size} does not split evenly over {world} ranks")
    local = c.batch_size // world
    stream = rebatch(batches, local, d_in, max_tokens=total * local)
    head = [b for _, b in zip(range(c.b_dec_init_batches), stream)]
    if not head:
        raise StageError("no activations to train the SAE on (the activation stream is empty)")
    first = torch.cat(head).double()
    # sums over every rank's first batches: [sum of rows, sum of row norms, rows]
    sums = dist.all_reduce_sum(torch.cat([first.sum(0), first.norm(dim=-1).sum()[None],
                                          torch.tensor([float(first.shape[0])], dtype=torch.float64)]))
    mean, mean_norm = sums[:d_in] / sums[-1], float(sums[d_in] / sums[-1])
    scale = 1.0
    if c.normalize == "expected_norm":
        scale = math.sqrt(d_in) / max(mean_norm, 1e-12)
    if init is None:
        b_dec = (mean * scale).float() if c.b_dec_init == "mean" else None
        sae = TopKSAE.random(d_in, c.width, c.k, generator=gen, b_dec=b_dec, apply_b_dec_to_input=c.apply_b_dec_to_input)
    else:
        if c.normalize != "none":
            raise StageError("an SAE started from given weights is trained on unscaled activations (normalize='none')")
        sae = init
        warm_start(sae, c.warm_start)
    sae = sae.to(device)
    trainer = TopKTrainer(sae, c.effective_lr(), c.aux_k_coef, c.dead_window, c.clip_grad_norm, c.decode,
                          c.resample_every, c.resample_pool, seed)
    bar = None
    if progress:
        from stitchplug.api import progress
        bar = progress(total=total, desc="SAE", leave=False)
    mse: list[float] = []
    ev: list[float] = []
    t0 = time.perf_counter()
    for xb in tf32_loop(itertools.chain(head, stream), c.allow_tf32, device):
        info = trainer.step(xb.to(device) * scale if scale != 1.0 else xb.to(device))
        mse.append(info["mse"] / scale ** 2)
        ev.append(info["ev"])
        if on_step is not None:
            on_step(trainer.steps, {**info, "flops": trainer.flops})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(mse=f"{mse[-1]:.4g}", ev=f"{ev[-1]:.3f}")
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    steps = len(mse)
    if steps == 0:
        raise StageError("the activation stream ended before one full SAE training batch")
    # FLOPs of every rank (each counted its share of the global batch)
    train_flops, plain_step = (int(v) for v in dist.all_reduce_sum(torch.tensor(
        [trainer.flops, trainer.step_flops.get(False) or 0], dtype=torch.int64)))
    tail = max(1, steps // 20)
    stride = max(1, math.ceil(steps / curve_points))
    summary = {
        "trainer": "stitchplug_sae.trainer", "steps": steps, "tokens": steps * c.batch_size,
        "seconds": round(seconds, 3), "tokens_per_s": round(steps * c.batch_size / max(seconds, 1e-9), 1),
        "train_flops": train_flops, "step_flops": plain_step if False in trainer.step_flops else None,
        "seed": seed, **c.model_dump(), "lr_used": c.effective_lr(), "input_scale": scale,
        "mse_first": sum(mse[:tail]) / tail, "mse_final": sum(mse[-tail:]) / tail,
        "explained_variance_first": sum(ev[:tail]) / tail, "explained_variance_final": sum(ev[-tail:]) / tail,
        "curve": {"step": list(range(0, steps, stride)), "mse": mse[::stride], "explained_variance": ev[::stride]},
        "dead_latents_train": int((trainer.since_fired >= min(c.dead_window, steps)).sum()),
        "resampled_latents": trainer.resampled, "resample_flops": trainer.resample_flops,
        "stopped_early": steps < total,
    }
    out = to_saelens(sae, scale, model_name, hook_name)
    out.cfg.metadata.stitchplug_training = summary
    return out, summary
