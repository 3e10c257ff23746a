"""A third-party kind that builds on another kind: the decoder direction of one SAE latent.

``requires = ("sae",)``: the pipeline runs the ``sae`` kind's stages first (with the run's ``sae:``
section) and hands its SAEs over in ``context.inputs["sae"]`` by role. This kind picks, on A, the
latent of the source SAE that fires most often on the training activations and keeps its decoder
row; the stitch carries it like any direction (``v @ P_up``). By Eq. 6 the transferred SAE's decoder
row of the same latent is exactly that, so the evaluator's cosine on B is 1 for the transferred arm
and about 0 for the random one. Nothing here imports the SAE plugin.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from stitchplug.api import ArtifactKind, Evaluator, StageError, write_json_atomic

FILE = "latent.json"


class SaeLatentConfig(BaseModel):
    """The most frequent latent of the run's source SAE, as a direction."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    tokens: int = Field(512, ge=1)
    """Training activations the latent frequencies are counted on."""
    native: bool = True
    """Also ask the ``sae`` kind for a native SAE on B (reported: best cosine to its decoder rows)."""


class SaeLatent(ArtifactKind):
    """Artifact: ``{"latent": int, "direction": [d floats], "meta": {...}}``."""

    name = "saelatent"
    config_class = SaeLatentConfig
    requires = ("sae",)
    supports_baseline = True

    def required_roles(self, cfg):
        return ("source", "transferred", "random") + (("native",) if cfg.native else ())

    def obtain(self, context, cfg):
        sae = context.inputs["sae"]["source"]
        x = torch.cat([b for _, b in zip(range(max(1, cfg.tokens // 256)), context.train_activations(batch_size=256))])
        with torch.no_grad():
            freq = (sae.encode(x.float()) > 0).float().mean(0)
        latent = int(freq.argmax())
        return {"latent": latent, "direction": sae.W_dec[latent].detach().float().tolist(),
                "meta": {"model": context.model_name, "frequency": float(freq[latent])}}

    def transfer(self, artifact, stitch, direction="up", **target):
        if direction != "up":
            raise StageError("saelatent transfers A -> B only")
        v = torch.tensor(artifact["direction"]) @ stitch.P_up.detach().float()
        return {"latent": artifact["latent"], "direction": v.tolist(),
                "meta": {**artifact["meta"], "model": target.get("target_model")}}

    def baseline(self, like, context):
        gen = torch.Generator().manual_seed(context.seed)
        v = torch.randn(len(like["direction"]), generator=gen)
        return {"latent": like["latent"], "direction": (v * torch.tensor(like["direction"]).norm() / v.norm()).tolist(),
                "meta": {**like["meta"], "random": True}}

    def save(self, artifact, folder, sidecar=None):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / FILE, {**artifact, "sidecar": sidecar or {}})
        return folder

    def load(self, folder):
        path = Path(folder) / FILE
        if not path.is_file():
            raise StageError(f"{folder} holds no saelatent artifact ({FILE})")
        return json.loads(path.read_text())


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


class Agreement(Evaluator):
    """Cosine of the direction to the same latent's decoder row of the SAE on this arm's model
    (source SAE on A, transferred SAE on B), and on B the best cosine to the native SAE's rows."""

    name = "saelatent-agreement"
    applies_to = {"saelatent"}

    def evaluate(self, artifact, context):
        saes = context.inputs.get("sae") or {}
        sae = saes["source" if context.side == "source" else "transferred"]
        v = torch.tensor(artifact["direction"])
        out = {"cosine_to_sae_row": float(_cos(v, sae.W_dec[artifact["latent"]].detach().float()))}
        if context.side == "target" and saes.get("native") is not None:
            out["best_cosine_to_native"] = float(_cos(v[None], saes["native"].W_dec.detach().float()).abs().max())
        return out
