"""The ``sae`` artifact kind: obtain (train or load) a source SAE, transfer it, save/load, baseline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from stitchplug.api import ArtifactContext, ArtifactKind, StageError

from . import config

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens import SAE


def _first_batch(batches) -> torch.Tensor:
    for b in batches:
        return torch.as_tensor(b)
    raise StageError("no activations to train the SAE on (the activation stream is empty)")


def mean_activation(batches, max_tokens: int = 16_384) -> torch.Tensor:
    """Mean of up to ``max_tokens`` activation rows (float64 accumulation)."""
    total, n = None, 0
    for b in batches:
        b = torch.as_tensor(b).reshape(-1, b.shape[-1]).double()
        b = b[: max_tokens - n]
        total = b.sum(0) if total is None else total + b.sum(0)
        n += b.shape[0]
        if n >= max_tokens:
            break
    if total is None:
        raise StageError("no activations to take the mean of")
    return (total / n).float()


def native_budget(sae: SAE, cfg: Any) -> dict:
    """Training config of a native SAE at ``sae``'s budget: every trainer field its training summary
    records, width and k of the SAE itself, ``train_tokens``/``lr``/``batch_size`` from ``cfg`` (the
    ``sae`` section) when the summary lacks them (a loaded SAE)."""
    from stitchplug.api import TrainerConfig

    t = dict(sae.cfg.metadata.get("stitchplug_training") or {})
    out = {f: t[f] for f in TrainerConfig.model_fields if t.get(f) is not None}
    out.setdefault("train_tokens", t.get("tokens") or cfg.train_tokens)
    out.setdefault("lr", cfg.lr)
    out.setdefault("batch_size", cfg.batch_size)
    out.update(width=int(sae.cfg.d_sae), k=int(getattr(sae.cfg, "k", t.get("k") or cfg.k)))
    return out


class SAEArtifact(ArtifactKind):
    """SAEs in SAELens format. The artifact object is a ``sae_lens.SAE`` (inference class)."""

    name = "sae"
    config_class = config.SAEConfig
    presets = config.PRESETS
    supports_baseline = True
    supports_native = True
    data_parallel = True  # under torchrun every rank trains on its share of each batch (the trainer's DDP)

    def obtain(self, context: ArtifactContext, cfg: Any) -> SAE:
        """Train a TopK SAE (``cfg.source == "train"``) on ``context.train_activations`` or load one
        (SAELens folder or ``release:...``); ``cfg`` is a :class:`stitchplug_sae.config.SAEConfig`.

        A trained SAE carries its training summary (incl. a subsampled loss curve) in
        ``sae.cfg.metadata.stitchplug_training``.
        """
        from stitchplug.api import load_sae, train_topk_sae

        if cfg.source == "train":
            context.need("train_activations", who="SAE training")
            batches = context.train_activations(batch_size=cfg.batch_size, seed=context.seed)
            if context.adapter is not None:
                d_in = int(context.adapter.d_model)
            else:
                first = _first_batch(context.train_activations(batch_size=cfg.batch_size, seed=context.seed))
                d_in = int(first.shape[-1])
            hook = context.hook_name if context.layer is not None else None
            sae, _ = train_topk_sae(batches, d_in, cfg, seed=context.seed, device=context.device,
                                    progress=context.progress,
                                    model_name=context.model_name or None, hook_name=hook)
            return sae
        sae = load_sae(cfg.source, device=context.device)
        self.check_fits(sae, context)
        return sae

    @staticmethod
    def check_fits(sae: SAE, context: ArtifactContext) -> None:
        """One-line StageError if ``sae`` does not read ``context``'s model width or hook."""
        if context.adapter is not None and int(sae.cfg.d_in) != int(context.adapter.d_model):
            raise StageError(f"SAE width mismatch: the SAE reads d_in={sae.cfg.d_in} but model "
                             f"{context.model_name!r} has d_model={context.adapter.d_model}")
        hook = sae.cfg.metadata.get("hook_name")
        if context.layer is not None and hook and hook != context.hook_name:
            raise StageError(f"the SAE reads hook {hook!r} but the run uses {context.hook_name!r}")

    def transfer(self, artifact: SAE, stitch: Any, direction: str = "up", **target: Any) -> SAE:
        """Eq. 6 (see :func:`stitchplug.sae.transfer.transfer_sae`); ``target`` may hold
        ``target_model``, ``target_hook``, ``check_model``."""
        from stitchplug.api import transfer_sae

        return transfer_sae(artifact, stitch, direction, **target)

    def check(self, artifact: SAE, stitch: Any, direction: str = "up", check_model: bool = True) -> None:
        """Validate before transferring (width, models, layer): one-line StageError."""
        from stitchplug.api import check_compatible

        check_compatible(artifact, stitch, direction, check_model=check_model)

    def save(self, artifact: SAE, folder: str | Path, sidecar: dict | None = None) -> Path:
        """SAELens folder plus sidecar (a trained SAE's training FLOPs go in as ``source_sae_flops``)."""
        from stitchplug.api import save_sae

        return save_sae(artifact, folder, sidecar)

    def load(self, folder: str | Path) -> SAE:
        from stitchplug.api import load_sae_folder

        return load_sae_folder(folder)

    def baseline(self, like: SAE, context: ArtifactContext) -> SAE:
        """Random SAE shaped like ``like`` with ``b_dec`` = mean of the target's training
        activations (first 16k tokens) when ``context.train_activations`` is given, else ``like``'s
        own ``b_dec``. See :func:`stitchplug.sae.transfer.random_sae_like`."""
        from stitchplug.api import random_sae_like

        b_dec = None
        if context.train_activations is not None:
            batches = context.train_activations(batch_size=1024, seed=context.seed)
            b_dec = mean_activation(batches, max_tokens=16_384)
        sae = random_sae_like(like, b_dec=b_dec, seed=context.seed)
        sae.cfg.metadata.model_name = like.cfg.metadata.get("model_name")
        sae.cfg.metadata.hook_name = like.cfg.metadata.get("hook_name")
        return sae

    def native(self, like: SAE, context: ArtifactContext, cfg: Any) -> SAE:
        """A TopK SAE trained on ``context``'s model (B) with ``like``'s budget: every trainer field
        its training summary records (width and k from the SAE itself), the rest from ``cfg``."""
        from stitchplug.api import train_topk_sae

        context.need("train_activations", "adapter", who="the native SAE")
        b = native_budget(like, cfg)
        batches = context.train_activations(batch_size=int(b["batch_size"]), seed=context.seed)
        sae, _ = train_topk_sae(batches, int(context.adapter.d_model), dict(b), seed=context.seed,
                                device=context.device, progress=context.progress,
                                model_name=context.model_name or None, hook_name=context.hook_name)
        return sae

    def diagnose(self, source: SAE, transferred: SAE, stitch: Any, target: ArtifactContext,
                 source_context: ArtifactContext | None = None) -> dict:
        """Split the transferred SAE's error on B into round-trip and mapped SAE error
        (:func:`stitchplug_sae.diagnostics.transfer_error_decomposition`)."""
        from .diagnostics import transfer_error_decomposition

        target.need("eval_activations", who="transfer diagnostics")
        out = transfer_error_decomposition(source, transferred, stitch, target.eval_activations(),
                                           target.massive_dims,
                                           source_context.massive_dims if source_context else [])
        if source_context is not None and source_context.eval_activations is not None:
            n, s, s2 = 0, 0.0, 0.0
            for x in source_context.eval_activations():
                x = x.double()
                n, s, s2 = n + x.shape[0], s + x.sum(0), s2 + x.pow(2).sum(0)
            out["source_input_variance"] = float((s2 - s ** 2 / n).sum() / max(n - 1, 1))
        return out

    def report_markdown(self, metrics: dict, folder) -> str:
        """Table-2-style section of ``report.md`` with plots (see :mod:`stitchplug_sae.report`)."""
        from .report import report_markdown

        return report_markdown(metrics, folder)

    def summary(self, results: dict) -> list[str]:
        """One line per evaluated arm: FVU (also excluding massive dims) and L0."""
        out = []
        for label, res in results.items():
            rec = res.get("reconstruction", {}) if isinstance(res, dict) else {}
            if rec:
                out.append(f"{label}: FVU {rec.get('fvu', float('nan')):.3f} "
                           f"(excl. massive {rec.get('fvu_excl_massive', float('nan')):.3f}), L0 {rec.get('l0', 0):.1f}")
        return out
