"""A complete third-party artifact kind: a difference-of-means direction (a one-vector linear probe).

The direction on A is ``mean(h | label = positive) - mean(h | label != positive)`` over documents'
mean activations at the stitch layer. The stitch maps it exactly: for ``T(h) = h @ P_up + b_up`` the
difference of the mapped means is ``direction @ P_up`` (the bias cancels), so that is the transfer.
Everything here comes from ``stitchplug.api``; nothing in the core knows this kind exists.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from stitchplug.api import (ArtifactContext, ArtifactKind, Evaluator, StageError, examples_from_documents,
                            write_json_atomic)


class DiffMeanConfig(BaseModel):
    """Difference-of-means direction between documents with one label and the rest."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    label_field: str = "topic"
    """Document field holding the label (wiki corpora have 'topic')."""
    positive: str | None = None
    """The positive label (None: the most common label among the training documents)."""
    max_docs: int = Field(200, ge=2)
    """At most this many training documents."""
    max_tokens: int = Field(64, ge=1)
    """Tokens per document run through the model."""


def doc_means(context: ArtifactContext, texts: list[str], max_tokens: int) -> torch.Tensor:
    """``[n_docs, d]``: each text's mean activation at the context's layer."""
    acts = context.activations_of(texts, max_tokens=max_tokens)
    return torch.stack([a.mean(0) if len(a) else torch.zeros(context.adapter.d_model) for a in acts])


def labelled(context: ArtifactContext, cfg: DiffMeanConfig, split: str, positive: str | None = None):
    context.need("documents", who="the diffmean artifact")
    examples = examples_from_documents(context.documents(split), cfg.label_field, limit=cfg.max_docs)
    if positive is None:
        if not examples:
            raise StageError(f"no {split} documents have a {cfg.label_field!r} field to label them")
        positive = cfg.positive or Counter(str(e.label) for e in examples).most_common(1)[0][0]
    y = torch.tensor([str(e.label) == positive for e in examples])
    return [e.text for e in examples], y, positive


class DiffMean(ArtifactKind):
    """Artifact: ``{"direction": [d] tensor, "meta": {...}}``."""

    name = "diffmean"
    config_class = DiffMeanConfig
    presets = {"quick": {"max_docs": 100}}
    supports_baseline = True

    def obtain(self, context, cfg):
        texts, y, positive = labelled(context, cfg, "train")
        if y.all() or not y.any():
            raise StageError(f"the training documents need both label {positive!r} and other labels")
        h = doc_means(context, texts, cfg.max_tokens)
        direction = h[y].mean(0) - h[~y].mean(0)
        return {"direction": direction, "meta": {"positive": positive, "label_field": cfg.label_field,
                                                 "model": context.model_name, "layer": context.layer,
                                                 "n_docs": len(texts)}}

    def check(self, artifact, stitch, direction="up"):
        d = artifact["direction"].shape[0]
        want = stitch.d_source if direction == "up" else stitch.d_target
        if d != want:
            raise StageError(f"direction has width {d} but the stitch's {direction} input has width {want}")

    def transfer(self, artifact, stitch, direction="up", **target):
        P = stitch.P_up if direction == "up" else stitch.P_down
        v = artifact["direction"].float() @ P.detach().float()
        return {"direction": v, "meta": {**artifact["meta"], "transferred": direction,
                                         "model": target.get("target_model"), "hook": target.get("target_hook")}}

    def baseline(self, like, context):
        gen = torch.Generator().manual_seed(context.seed)
        v = torch.randn(like["direction"].shape[0], generator=gen)
        return {"direction": v * like["direction"].norm() / v.norm(), "meta": {**like["meta"], "random": True}}

    def save(self, artifact, folder, sidecar=None):
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"direction": artifact["direction"].contiguous()}, str(folder / "direction.safetensors"))
        write_json_atomic(folder / "meta.json", {**artifact["meta"], "sidecar": sidecar or {}})
        return folder

    def load(self, folder):
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "direction.safetensors").exists():
            raise StageError(f"{folder} holds no diffmean direction (direction.safetensors)")
        return {"direction": load_file(str(folder / "direction.safetensors"))["direction"],
                "meta": json.loads((folder / "meta.json").read_text())}

    def report_markdown(self, metrics, folder):
        res = metrics.get(self.name, {})
        rows = ["## Difference-of-means direction", "", "| arm | AUROC on held-out documents | cosine to native |",
                "|---|---|---|"]
        for label, ev in res.items():
            r = ev.get("diffmean-separation", {})
            rows.append(f"| {label} | {_fmt(r.get('auroc'))} | {_fmt(r.get('cosine_to_native'))} |")
        return "\n".join(rows)

    def summary(self, results):
        return [f"{label}: AUROC {_fmt(ev.get('diffmean-separation', {}).get('auroc'))}"
                for label, ev in results.items()]


def _fmt(v):
    return "-" if v is None else f"{v:.3f}"


class Separation(Evaluator):
    """How well the direction separates the positive label on the held-out documents of this model,
    and its cosine to the direction computed natively on this model's training documents."""

    name = "diffmean-separation"
    applies_to = {"diffmean"}

    def evaluate(self, artifact, context):
        from sklearn.metrics import roc_auc_score

        cfg = context.config or DiffMeanConfig()
        positive = artifact["meta"]["positive"]
        texts, y, _ = labelled(context, cfg, "eval", positive)
        out = {"n_eval_docs": len(texts), "n_positive": int(y.sum()), "auroc": None}
        if texts and 0 < int(y.sum()) < len(texts):
            score = doc_means(context, texts, cfg.max_tokens) @ artifact["direction"].float()
            out["auroc"] = float(roc_auc_score(y.numpy(), score.numpy()))
        key = ("diffmean-native", id(context.adapter), context.layer, positive)
        if key not in context.memo:
            tr, ytr, _ = labelled(context, cfg, "train", positive)
            h = doc_means(context, tr, cfg.max_tokens)
            context.memo[key] = h[ytr].mean(0) - h[~ytr].mean(0) if 0 < int(ytr.sum()) < len(tr) else None
        native = context.memo[key]
        out["cosine_to_native"] = None if native is None else float(
            torch.nn.functional.cosine_similarity(native, artifact["direction"].float(), dim=0))
        return out
