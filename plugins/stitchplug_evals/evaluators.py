"""The first-party evaluators. Each applies to artifacts with ``encode``/``decode`` (SAEs) and reads
an :class:`stitchplug.artifacts.ArtifactContext`; results are JSON-serialisable dicts.

Shared work is cached in ``context.memo``: one activation pass per SAE (reconstruction, dead
latents, frequencies) and one clean/spliced/zero-ablated loss pass per SAE (Delta loss, CE recovered).
"""

from __future__ import annotations

from typing import Any

import torch

from stitchplug.api import ArtifactContext, Evaluator

from .loss import ce_loss_score, spliced_losses
from .stats import cached_stats


def reconstruct_fn(sae: Any):
    """``x -> sae.decode(sae.encode(x))`` in the SAE's dtype and device."""

    def recon(x: torch.Tensor) -> torch.Tensor:
        dev = getattr(sae, "device", x.device)
        return sae.decode(sae.encode(x.to(dev, getattr(sae, "dtype", x.dtype)))).to(x.device)

    return recon


def _losses(sae: Any, context: ArtifactContext, zero: bool) -> dict:
    """Clean CE (cached per adapter), spliced CE (cached per SAE) and zero-ablated CE (cached per layer).

    ``context.loss_batch_size`` (default 4) sets windows per forward pass: the logits of a
    262k-vocabulary model take ~0.5 GB per 4 windows of 128 tokens.
    """
    context.need("adapter", "layer", "eval_windows", who="loss evaluation")
    ex = context.memo
    out: dict = {}
    clean_key = ("_ce_clean", id(context.adapter))
    zero_key = ("_ce_zero", id(context.adapter), context.layer)
    spliced = ex.setdefault("_ce_spliced", [])
    hit = next((v for obj, lay, v in spliced if obj is sae and lay == context.layer), None)
    need_clean = clean_key not in ex
    need_zero = zero and zero_key not in ex
    res = spliced_losses(context.adapter, context.layer, context.eval_windows,
                         None if hit is not None else reconstruct_fn(sae),
                         clean=need_clean, zero_ablation=need_zero,
                         batch_size=int(context.loss_batch_size))
    if need_clean:
        ex[clean_key] = res["ce_clean"]
    if need_zero:
        ex[zero_key] = res["ce_zero_ablation"]
    if hit is None:
        hit = res["ce_spliced"]
        spliced.append((sae, context.layer, hit))
    out["ce_clean"] = ex[clean_key]
    out["ce_spliced"] = hit
    if zero:
        out["ce_zero_ablation"] = ex[zero_key]
    out["n_tokens"] = res["n_tokens"]
    return out


class ReconstructionEvaluator(Evaluator):
    """L0, MSE, FVU, FVU excluding the massive-activation dims, mean per-dim FVU, cosine similarity
    on held-out activations (:class:`stitchplug.metrics.ReconAccumulator`)."""

    name = "reconstruction"
    applies_to = {"sae"}

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        s = cached_stats(artifact, context)
        return {"l0": s["l0"], **s["recon"]}


class DeadLatentsEvaluator(Evaluator):
    """Share of latents that never fired (non-zero code) on any held-out token."""

    name = "dead_latents"
    applies_to = {"sae"}

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        s = cached_stats(artifact, context)
        fire = s["fire_count"]
        dead = int((fire == 0).sum())
        return {"dead_share": dead / fire.numel(), "n_dead": dead, "d_sae": int(fire.numel()),
                "n_tokens": s["n_tokens"]}


class LatentFrequencyEvaluator(Evaluator):
    """Per-latent firing frequency on held-out tokens (a list, for the frequency plot)."""

    name = "latent_frequency"
    applies_to = {"sae"}

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        s = cached_stats(artifact, context)
        freq = (s["fire_count"].double() / s["n_tokens"]).tolist()
        return {"latent_frequency": freq, "n_tokens": s["n_tokens"]}


class DeltaLossEvaluator(Evaluator):
    """Delta loss = CE with the SAE's reconstruction spliced in at the hook (non-special positions)
    minus clean CE, in nats/token on held-out windows (paper Table 2)."""

    name = "delta_loss"
    applies_to = {"sae"}

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        r = _losses(artifact, context, zero=False)
        return {**r, "delta_loss": r["ce_spliced"] - r["ce_clean"]}


class CERecoveredEvaluator(Evaluator):
    """SAELens's CE-loss-recovered score ``(CE_zero_abl - CE_sae) / (CE_zero_abl - CE_clean)`` with the
    residual at the hook zero-ablated at every position, as ``sae_lens.evals.get_recons_loss`` does."""

    name = "ce_recovered"
    applies_to = {"sae"}

    def evaluate(self, artifact: Any, context: ArtifactContext) -> dict:
        r = _losses(artifact, context, zero=True)
        return {**r, "ce_loss_score": ce_loss_score(r["ce_clean"], r["ce_spliced"], r["ce_zero_ablation"])}


EVALUATORS = (ReconstructionEvaluator, DeadLatentsEvaluator, LatentFrequencyEvaluator, DeltaLossEvaluator,
              CERecoveredEvaluator)


def evaluate_all(artifact: Any, context: ArtifactContext, names: list[str] | None = None) -> dict[str, dict]:
    """Run the named first-party evaluators (default: all) and return ``{name: metrics}``."""
    chosen = [cls() for cls in EVALUATORS if names is None or cls.name in names]
    return {ev.name: ev.evaluate(artifact, context) for ev in chosen}
