"""Attention deactivation: a hand-set head that attends to BOS when a planted latent fires is found."""

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from stitchplug.stitch.stitched_ce import windows_for_texts
from stitchplug_analysis.attention import _pattern, bos_attention_effects, rank_features
from stitchplug_analysis.common import paired_captures
from stitchplug_models.tiny import TRAIN_TEXT, load

TEXTS = [t for t in TRAIN_TEXT.split("\n") if len(t) > 30][:4]


def _planted():
    """tiny-gpt2 where head 1.2 attends to BOS exactly when direction u is in the query's residual."""
    m = load("tiny-gpt2")
    model = m.model
    d = model.cfg.d_model
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(d, 3, generator=g) - 0.0)[0]
    ones = torch.ones(d) / d ** 0.5
    u, v = q[:, 0] - (q[:, 0] @ ones) * ones, q[:, 1] - (q[:, 1] @ ones) * ones  # survive LayerNorm centring
    u, v = u / u.norm(), v / v.norm()
    bos = m.bos_id
    content = [i for i in range(model.cfg.d_vocab) if i % 2 == 0 and i != bos]
    with torch.no_grad():
        model.W_E[bos] += 6.0 * v
        model.W_E[content] += 3.0 * u
        e = torch.zeros(model.cfg.d_head)
        e[0] = 1.0
        model.blocks[1].attn.W_Q[2] = 4.0 * torch.outer(u, e)
        model.blocks[1].attn.W_K[2] = 4.0 * torch.outer(v, e)
        model.blocks[1].attn.b_Q[2] = 0
        model.blocks[1].attn.b_K[2] = 0
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=12, apply_b_dec_to_input=False))
    torch.manual_seed(1)
    with torch.no_grad():
        sae.W_enc.normal_(std=0.2)
        sae.W_dec.normal_(std=0.2)
        sae.b_enc.fill_(0.1)
        sae.b_dec.zero_()
        sae.W_enc[:, 4] = u
        sae.b_enc[4] = -1.5
        sae.W_dec[4] = 3.0 * u
    return m, sae


def test_planted_bos_head_is_found(one_thread):
    m, sae = _planted()
    caps = paired_captures(m, m, windows_for_texts(TEXTS, m, m, 64), 0, 0).a
    eff = bos_attention_effects(m, sae, 0, caps, list(range(12)))
    ranking = rank_features(eff)
    top = ranking[0]
    assert (top["latent"], top["layer"], top["head"], top["path"]) == (4, 1, 2, "q")
    assert top["score"] > 0.2 and top["score"] > 3 * ranking[1]["score"]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama-a", "tiny-gemma3"])
def test_manual_pattern_matches_the_model(name, one_thread):
    """One layer's attention recomputed from its cached input (GQA, rotary, local windows, qk-norm)."""
    m = load(name)
    ids = m.encode(" ".join(TEXTS)).ids[None]
    _, cache = m.model.run_with_cache(ids)
    for L in range(m.n_layers):
        x = cache[f"blocks.{L}.hook_resid_pre"]
        assert torch.allclose(_pattern(m.model, L, x, x), cache[f"blocks.{L}.attn.hook_pattern"], atol=1e-5)
