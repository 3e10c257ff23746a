"""The analysis parts through the registered Evaluator interface (ArtifactContext in, dict out)."""

import numpy as np
import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig

from stitchplug.artifacts import ArtifactContext
from stitchplug.errors import StageError
from stitchplug.plugins import registry
from stitchplug.stitch.model import Stitch
from stitchplug.stitch.stitched_ce import windows_for_texts
from stitchplug_models.tiny import TRAIN_TEXT, load
from stitchplug.sae.transfer import transfer_sae

TEXTS = [t for t in TRAIN_TEXT.split("\n") if len(t) > 30][:4]
NAMES = ("feature_transferability", "semantic_structural", "entropy_features", "attention_deactivation")


def test_registered_but_not_run_by_the_pipeline():
    reg = registry()
    for name in NAMES:
        ev = reg.get("evaluators", name).factory()
        assert ev.name == name and "sae" not in ev.applies_to and ev.analyzes == {"sae"}


def test_evaluators_on_a_tiny_model(one_thread):
    a = load("tiny-llama-a")
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=24, k=4, apply_b_dec_to_input=True))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    moved = transfer_sae(sae, Stitch.identity(32), check_model=False)
    wins = windows_for_texts(TEXTS, a, a, 64)
    ctx_a = ArtifactContext(model_name=a.name, layer=1, adapter=a, eval_windows=[w[0].ids for w in wins])
    ctx_b = ArtifactContext(model_name=a.name, layer=1, adapter=a, eval_windows=[w[1].ids for w in wins], other=ctx_a,
                            memo={"analysis": {"source_artifact": sae, "paired_windows": wins, "top": 2,
                                               "candidates": 3}})
    reg = registry()
    t = reg.get("evaluators", "feature_transferability").factory().evaluate(moved, ctx_b)
    live = [v for v in t["per_latent"] if v is not None]
    assert live and min(live) > 0.999
    e = reg.get("evaluators", "entropy_features").factory().evaluate(sae, ctx_b)
    assert len(e["top"]) == 2 and len(e["null_share"]) == 24
    at = reg.get("evaluators", "attention_deactivation").factory().evaluate(sae, ctx_b)
    assert len(at["ranking"]) == 3 and all(np.isfinite(r["score"]) for r in at["ranking"])
    with pytest.raises(StageError, match="context.other"):
        reg.get("evaluators", "feature_transferability").factory().evaluate(moved, ctx_a)
