"""Entropy features: a decoder row planted in the unembedding's null space is found first."""

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from stitchplug.api import StageError
from stitchplug.stitch.stitched_ce import windows_for_texts
from stitchplug_analysis.common import paired_captures, unembed_path
from stitchplug_analysis.entropy import entropy_features, null_basis, null_share
from stitchplug_models.tiny import TRAIN_TEXT, load

TEXTS = [t for t in TRAIN_TEXT.split("\n") if len(t) > 30][:4]


def test_null_share_of_singular_directions():
    torch.manual_seed(0)
    W = torch.randn(20, 300) * torch.linspace(0.1, 3, 20)[:, None]
    basis = null_basis(W, 0.02)
    assert basis.shape == (20, 1)
    U, S, _ = torch.linalg.svd(W.double(), full_matrices=False)
    share = null_share(torch.stack([U[:, -1], U[:, 0], U[:, -1] + U[:, 0]]).float(), basis)
    assert np.allclose(share.numpy(), [1.0, 0.0, 0.5], atol=1e-4)


def test_planted_null_space_direction_is_the_top_entropy_feature(one_thread):
    a = load("tiny-llama-a")
    W = unembed_path(a)
    low = null_basis(W, 0.02)[:, 0]
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=24, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.normal_()
        sae.b_enc.fill_(0.5)
        sae.W_dec[7] = 3.0 * low
    caps = paired_captures(a, a, windows_for_texts(TEXTS, a, a, 64), 1, 1).a
    res = entropy_features(sae, a, 1, caps, W, top=3)
    top = res["top"][0]
    assert top["latent"] == 7 and top["null_share"] > 0.999
    assert max(s for i, s in enumerate(res["null_share"]) if i != 7) < 0.5
    assert top["frequency"] > 0 and top["n_positions"] > 0
    assert np.isfinite(top["delta_entropy"]) and top["entropy_clean"] > 0


def test_unembed_path_refuses_an_adapter_without_a_transformerlens_model():
    """``folded_unembed`` would fall back to ``unembed()``; the analysis keeps its own refusal."""
    class NoTL:
        name, model = "plain", None

        def unembed(self):
            return torch.zeros(2, 3)

    with pytest.raises(StageError, match="needs a TransformerLens model adapter; 'plain'"):
        unembed_path(NoTL())
