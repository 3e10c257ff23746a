"""Transferred SAE as initialisation (paper §3.1, Fig. 2, Tables 3-4).

Two arms train the same TopK SAE on model B's activations with the same data order and
hyperparameters: ``stitched`` starts from the transferred SAE theta' (Eq. 6) and also pays the stitch's
fitting FLOPs; ``scratch`` starts from random init (encoder = decoder transpose). Explained variance
on held-out activations is logged every ``eval_every`` steps; the FLOPs at which its moving average
first crosses each threshold give the savings ``(scratch - stitched) / scratch``.

Both arms are trained by the project's one TopK trainer (:mod:`stitchplug.sae.trainer`): constant lr
Adam, unnormalised activations, decoder rows renormalised to unit norm after every step, dense decode
(the paper's SAELens accounting), optional AuxK loss. theta''s decoder rows are not unit norm; the
``warm_start`` option says how the stitched arm starts from them (``fold``: folded into the encoder at
step 0; ``preserve``: kept at their step-0 norms, so step 0 is exactly theta'; see
:func:`stitchplug.sae.topk.warm_start` and docs/flops.md).
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Callable, Iterable, Iterator, Sequence

import torch

from stitchplug.api import (WARM_STARTS, ConfigError, ReconAccumulator, StageError, TopKSAE,  # noqa: F401
                            TopKTrainer, analytic_step_flops, fold_decoder_norms, massive_dims,
                            measure_step_flops, sae_step, warm_start)

from . import scaling
from .config import RECIPES, InitExperimentConfig  # noqa: F401  (their home is .config: no torch to build flags)
from .ledger import ArmLedger

METRICS = ("fvu", "fvu_excl_massive")


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(sae: TopKSAE, x_eval: torch.Tensor, exclude: Sequence[int], chunk: int = 4096,
             sparse: bool = False) -> dict:
    """Reconstruction metrics (stitchplug.metrics) of ``sae`` on held-out rows, plus explained variance
    and ``silent_eval``: the share of latents that fire on none of the held-out rows (at step 0 it
    tells whether a warm start's dead latents were dead from the start). ``sparse``: decode only the
    k selected rows (the same function up to float summation order; faster at large widths)."""
    acc = ReconAccumulator(x_eval.shape[1], list(exclude))
    fired = torch.zeros(sae.width, dtype=torch.bool)
    for i in range(0, x_eval.shape[0], chunk):
        xb = x_eval[i:i + chunk].float()
        if sparse:
            x_hat, vals, idx = sae(xb, sparse=True)
            fired[idx[vals > 0].cpu()] = True
        else:
            x_hat, z, _ = sae(xb)
            fired |= (z > 0).any(0).cpu()
        acc.update(xb, x_hat)
    r = acc.result()
    return {"mse": r["mse"], "fvu": r["fvu"], "fvu_excl_massive": r["fvu_excl_massive"],
            "ev": 1.0 - r["fvu"], "ev_excl_massive": 1.0 - r["fvu_excl_massive"],
            "silent_eval": float((~fired).float().mean())}


@torch.no_grad()
def selection_agreement(a: TopKSAE, b: TopKSAE, x: torch.Tensor) -> float:
    """Mean share of the k selected latents that two SAEs of the same width have in common."""
    ia = a.select(a.pre(x))
    ib = b.select(b.pre(x))
    same = (ia[:, :, None] == ib[:, None, :]).any(-1).float().mean()
    return float(same)


# --------------------------------------------------------------------------- one arm


def _digest(x: torch.Tensor) -> str:
    return hashlib.blake2b(x.detach().float().contiguous().numpy().tobytes(), digest_size=8).hexdigest()


def train_arm(sae: TopKSAE, batches: Iterable[torch.Tensor], x_eval: torch.Tensor, cfg: InitExperimentConfig,
              ledger: ArmLedger, exclude: Sequence[int] = (), eval_at: Iterable[int] = ()) -> dict:
    """Train ``sae`` on ``batches`` for up to ``cfg.steps`` steps, logging held-out metrics.

    Returns ``{"curve": [{step, flops, mse, fvu, ...}], "ledger", "dead_fraction", "batch_digests"}``;
    the curve's first point is the initialisation (step 0, FLOPs = the ledger's offset).
    """
    trainer = TopKTrainer(sae, cfg.lr, cfg.aux_k_coef, cfg.dead_window, decode=cfg.decode,
                          resample_every=cfg.resample_every, resample_pool=cfg.resample_pool, seed=cfg.seed)
    eval_at = set(eval_at)
    sparse = cfg.decode == "sparse"
    curve = [{"step": 0, "flops": ledger.total, **evaluate(sae, x_eval, exclude, cfg.eval_batch, sparse)}]
    digests: list[str] = []
    step = 0
    snap, snap_step = _snapshot(sae), 0
    for xb in itertools.islice(batches, cfg.steps):  # never pulls a batch it will not train on
        xb = xb.reshape(-1, sae.d).float()
        digests.append(_digest(xb))
        info = trainer.step(xb)
        step += 1
        flops = ledger.pay_step(info["aux_active"], info["extra_flops"])
        if step % cfg.eval_every == 0 or step == cfg.steps or step in eval_at:
            curve.append({"step": step, "flops": flops, **evaluate(sae, x_eval, exclude, cfg.eval_batch, sparse),
                          "dead": trainer.dead_fraction(), "resampled": trainer.resampled,
                          "update": _relative_update(sae, snap, step - snap_step)})
            snap, snap_step = _snapshot(sae), step
    if curve[-1]["step"] != step:
        curve.append({"step": step, "flops": ledger.total, **evaluate(sae, x_eval, exclude, cfg.eval_batch, sparse),
                      "dead": trainer.dead_fraction(), "resampled": trainer.resampled,
                      "update": _relative_update(sae, snap, max(step - snap_step, 1))})
    dead_frac = trainer.dead_fraction()
    return {"curve": curve, "ledger": ledger.summary(cfg.source_sae_flops), "dead_fraction": dead_frac,
            "resampled_latents": trainer.resampled, "batch_digests": digests}


_TRACKED = ("W_enc", "W_dec", "b_enc", "b_dec")


def _snapshot(sae: TopKSAE) -> dict:
    return {n: getattr(sae, n).detach().clone() for n in _TRACKED}


@torch.no_grad()
def _relative_update(sae: TopKSAE, before: dict, steps: int) -> dict:
    """Per parameter, ``||W_now - W_before|| / ||W_before|| / steps``: the relative step size Adam
    took per step since the last evaluation (``W_enc`` also per latent: the median over columns of
    ``||dW_enc[:, i]|| / ||W_enc[:, i]||`` per step). Answers whether a larger folded encoder moves
    more slowly in relative terms (docs/flops.md)."""
    out = {}
    for n in _TRACKED:
        w, b = getattr(sae, n).detach(), before[n]
        out[n] = float((w - b).norm() / b.norm().clamp_min(1e-12)) / max(steps, 1)
    col = (sae.W_enc.detach() - before["W_enc"]).norm(dim=0) / before["W_enc"].norm(dim=0).clamp_min(1e-12)
    out["W_enc_col_median"] = float(col.median()) / max(steps, 1)
    return out


def crossings(curve: list[dict], thresholds: Sequence[float], window: int) -> dict:
    """First-crossing FLOPs of each threshold for raw and massive-excluded explained variance."""
    flops = [p["flops"] for p in curve]
    return {m: {f"{t:.2f}": scaling.first_crossing(flops, [1.0 - p[m] for p in curve], t, window)
                for t in thresholds} for m in METRICS}


# --------------------------------------------------------------------------- the experiment


def _as_list(w: dict | Sequence[dict]) -> list[dict]:
    return [w] if isinstance(w, dict) else list(w)


def _first_batch(factory: Callable[[], Iterator[torch.Tensor]]) -> torch.Tensor:
    it = iter(factory())
    try:
        return next(it).float()
    except StopIteration:
        raise StageError("the training activation iterator is empty") from None


def step_costs(d: int, width: int, k: int, cfg: InitExperimentConfig) -> dict:
    """Counted (FlopCounterMode, dense step: the paper's accounting even when training sparse) and
    analytic FLOPs of one step of either arm."""
    bdi = cfg.apply_b_dec_to_input
    step = measure_step_flops(d, width, k, cfg.batch_size, apply_b_dec_to_input=bdi)
    aux = measure_step_flops(d, width, k, cfg.batch_size, aux=True, apply_b_dec_to_input=bdi) if cfg.aux_k_coef > 0 else 0
    analytic = analytic_step_flops(cfg.batch_size, d, width, apply_b_dec_to_input=bdi)
    return {"sae_step_flops_counted": step, "sae_step_flops_analytic": analytic,
            "counted_over_analytic": step / analytic, "aux_step_flops_counted": aux or None,
            "dense_decode_charged": True}


def scratch_init(d: int, width: int, k: int, cfg: InitExperimentConfig,
                 target_acts_train: Callable[[], Iterator[torch.Tensor]]) -> TopKSAE:
    """The scratch arm: random unit decoder rows (seed ``cfg.seed + width``), ``W_enc = W_dec^T``,
    ``b_dec`` zeros or the first batch's mean. When the encoder reads ``x`` (not ``x - b_dec``),
    ``b_enc = -b_dec @ W_enc``, so its step-0 function is the same as with ``x - b_dec``."""
    gen = torch.Generator().manual_seed(cfg.seed + width)
    b_dec = _first_batch(target_acts_train).reshape(-1, d).mean(0) if cfg.scratch_b_dec == "mean" else None
    sae = TopKSAE.random(d, width, k, generator=gen, b_dec=b_dec, apply_b_dec_to_input=cfg.apply_b_dec_to_input)
    if not cfg.apply_b_dec_to_input:
        with torch.no_grad():
            sae.b_enc.copy_(-(sae.b_dec @ sae.W_enc))
    return sae


def stitched_init(weights: dict, mode: str, cfg: InitExperimentConfig, x_eval: torch.Tensor,
                  exclude: Sequence[int]) -> tuple[TopKSAE, dict]:
    """theta' prepared by the warm start ``mode``, and what the start did: decoder norms, TopK
    selection agreement with theta' on held-out rows, theta''s EV and the arm's step-0 EV on the
    same rows (``ev_before_fold``/``ev_after_fold`` keep their old names)."""
    bdi = cfg.apply_b_dec_to_input
    theta, before = TopKSAE.from_weights(weights, bdi), TopKSAE.from_weights(weights, bdi)
    if x_eval.shape[1] != theta.d:
        raise StageError(f"transferred SAE has input width {theta.d} but the target activations have width {x_eval.shape[1]}")
    stats = warm_start(theta, mode)
    ev_t = evaluate(before, x_eval, exclude, cfg.eval_batch)["ev"]
    ev_0 = evaluate(theta, x_eval, exclude, cfg.eval_batch)["ev"]
    info = {"warm_start": mode, **stats,
            "topk_selection_agreement": selection_agreement(before, theta, x_eval[: min(len(x_eval), 4096)].float()),
            "ev_transferred": ev_t, "ev_step0": ev_0, "ev_before_fold": ev_t, "ev_after_fold": ev_0}
    return theta, info


def run_width(target_acts_train: Callable[[], Iterator[torch.Tensor]], x_eval: torch.Tensor, weights: dict,
              stitch_flops: int, cfg: InitExperimentConfig, exclude: Sequence[int]) -> dict:
    """Both arms at one width. Raises :class:`StageError` if they did not see identical batches."""
    theta, renorm = stitched_init(weights, cfg.warm_start, cfg, x_eval, exclude)
    d, width, k = theta.d, theta.width, theta.k
    costs = step_costs(d, width, k, cfg)
    step_flops, aux_flops = costs["sae_step_flops_counted"], costs["aux_step_flops_counted"] or 0
    scratch = scratch_init(d, width, k, cfg, target_acts_train)
    arms = {
        "scratch": train_arm(scratch, target_acts_train(), x_eval, cfg, ArmLedger(step_flops, aux_flops, 0), exclude),
        "stitched": train_arm(theta, target_acts_train(), x_eval, cfg, ArmLedger(step_flops, aux_flops, int(stitch_flops)), exclude),
    }
    da, db = arms["scratch"].pop("batch_digests"), arms["stitched"].pop("batch_digests")
    if da != db:
        raise StageError("the two arms consumed different training batches; target_acts_train() must "
                         "yield the same data in the same order every time it is called")
    cross = {arm: crossings(r["curve"], cfg.thresholds, cfg.ma_window) for arm, r in arms.items()}
    budget = arms["scratch"]["ledger"]["total_flops"]
    sav = {m: scaling.savings_table(cross["scratch"][m], cross["stitched"][m], cfg.thresholds, budget) for m in METRICS}
    return {
        "width": width, "k": k, "d": d,
        "ledger": {**costs, "stitch_flops": int(stitch_flops), "source_sae_flops": cfg.source_sae_flops},
        "init_renorm": renorm, "arms": arms, "crossings": cross, "savings": sav,
        "data_order": {"identical": True, "steps": len(da), "digest": hashlib.blake2b("".join(da).encode(), digest_size=8).hexdigest()},
    }


def fit_arms(widths: list[dict]) -> dict:
    """Frontier over widths and power-law fit per arm, for FVU, massive-excluded FVU and MSE."""
    out: dict = {}
    for metric in (*METRICS, "mse"):
        out[metric] = {}
        for arm in ("scratch", "stitched"):
            curves = [([p["flops"] for p in w["arms"][arm]["curve"]], [p[metric] for p in w["arms"][arm]["curve"]])
                      for w in widths]
            grid, env = scaling.frontier(curves)
            fit = scaling.fit_power_law(grid, env)
            fit["frontier"] = {"flops": grid.tolist(), "loss": [None if v != v else float(v) for v in env]}
            out[metric][arm] = fit
    return out


def run_init_experiment(target_acts_train: Callable[[], Iterator[torch.Tensor]], target_acts_eval: torch.Tensor,
                        transferred_sae_weights: dict | Sequence[dict], stitch_flops: int,
                        cfg: InitExperimentConfig | dict | None = None) -> dict:
    """Run the experiment at one width (a weights dict) or a width sweep (a list of them).

    ``target_acts_train()`` must return a fresh iterator of ``[B, dB]`` tensors in the same order on
    every call (each arm calls it once); ``target_acts_eval`` is ``[N, dB]`` held-out activations.
    Returns a JSON-ready dict for ``metrics.json`` (see docs/flops.md for its keys).
    """
    if cfg is None:
        cfg = InitExperimentConfig()
    elif isinstance(cfg, dict):
        try:
            cfg = InitExperimentConfig(**cfg)
        except ValueError as exc:
            raise ConfigError(f"invalid init-experiment config: {exc}".splitlines()[0]) from None
    if stitch_flops is None or int(stitch_flops) < 0:
        raise StageError("stitch_flops must be a non-negative integer (the stitch sidecar's 'flops')")
    x_eval = target_acts_eval.reshape(-1, target_acts_eval.shape[-1]).float()
    exclude = massive_dims(x_eval)
    widths = [run_width(target_acts_train, x_eval, w, stitch_flops, cfg, exclude)
              for w in sorted(_as_list(transferred_sae_weights), key=lambda w: w["W_dec"].shape[0])]
    digests = {w["data_order"]["digest"] for w in widths}
    return {
        "kind": "init_experiment",
        "config": cfg.model_dump(),
        "massive_dims": exclude,
        "stitch_flops": int(stitch_flops),
        "source_sae_flops": cfg.source_sae_flops,
        "n_eval_tokens": int(x_eval.shape[0]),
        "data_order_identical_across_widths": len(digests) == 1,
        "widths": {str(w["width"]): w for w in widths},
        "fits": fit_arms(widths),
    }
