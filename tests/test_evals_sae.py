"""SAE evaluators on a tiny random-init TransformerLens model: reconstruction, Delta loss, CE recovered,
dead latents, latent frequencies; CE-recovered cross-checked against sae_lens.evals.get_recons_loss."""

from types import SimpleNamespace

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.evals import get_recons_loss
from sae_lens.training.activation_scaler import ActivationScaler
from transformer_lens import HookedTransformer, HookedTransformerConfig

from stitchplug.adapter import TLAdapter
from stitchplug.artifacts import ArtifactContext
from stitchplug.errors import StageError
from stitchplug.plugins import registry
from stitchplug_evals.evaluators import evaluate_all
from stitchplug_evals.loss import spliced_losses

D, VOCAB, LAYER, BOS = 16, 60, 1, 0


@pytest.fixture(scope="module")
def adapter():
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=D, n_ctx=32, d_head=4, n_heads=4, d_vocab=VOCAB,
                                  act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg)
    tok = SimpleNamespace(all_special_ids=[BOS], bos_token_id=BOS)
    return TLAdapter("tiny", model, tok)


@pytest.fixture(scope="module")
def windows():
    g = torch.Generator().manual_seed(1)
    body = torch.randint(1, VOCAB, (12, 20), generator=g)
    with_bos = [torch.cat([torch.tensor([BOS]), w[: 20 - i % 4]]) for i, w in enumerate(body)]  # ragged
    return {"bos": with_bos, "plain": body}


def context(adapter, windows):
    ids = torch.stack([w[:17] for w in windows])
    acts = adapter.capture(ids, [LAYER])[LAYER][:, 1:]  # drop BOS

    return ArtifactContext(model_name="tiny", layer=LAYER, adapter=adapter,
                           eval_activations=lambda: iter(acts.split(4)), eval_windows=windows)


def identity_sae(d=D):
    """relu(x) - relu(-x) == x: a 2d-latent StandardSAE that reconstructs perfectly."""
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def zero_sae(d=D):
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=8, apply_b_dec_to_input=False))
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
    return sae


def test_evaluators_are_registered():
    reg = registry()
    for name in ("reconstruction", "dead_latents", "latent_frequency", "delta_loss", "ce_recovered"):
        ev = reg.get("evaluators", name).factory()
        assert ev.name == name and "sae" in ev.applies_to


def test_identity_sae_is_perfect(adapter, windows):
    res = evaluate_all(identity_sae(), context(adapter, windows["bos"]))
    r = res["reconstruction"]
    assert r["fvu"] < 1e-10 and r["mse"] < 1e-10 and r["cos"] > 0.999999
    assert r["n_tokens"] == 12 * 16
    assert abs(res["delta_loss"]["delta_loss"]) < 1e-5
    assert res["delta_loss"]["ce_clean"] > 1.0
    assert abs(res["ce_recovered"]["ce_loss_score"] - 1.0) < 1e-4


def test_zero_reconstruction_recovers_nothing(adapter, windows):
    # without special tokens, splicing zeros everywhere is exactly the zero ablation
    res = evaluate_all(zero_sae(), context(adapter, windows["plain"]), ["ce_recovered", "delta_loss",
                                                                        "reconstruction", "dead_latents"])
    ce = res["ce_recovered"]
    assert ce["ce_zero_ablation"] != pytest.approx(ce["ce_clean"], abs=1e-3)
    assert abs(ce["ce_loss_score"]) < 1e-5
    assert res["delta_loss"]["delta_loss"] == pytest.approx(ce["ce_zero_ablation"] - ce["ce_clean"])
    assert res["reconstruction"]["fvu"] > 0.99 and res["reconstruction"]["l0"] == 0
    assert res["dead_latents"]["dead_share"] == 1.0


def test_ce_recovered_matches_saelens(adapter, windows):
    torch.manual_seed(2)
    sae = TopKSAE(TopKSAEConfig(d_in=D, d_sae=32, k=4))
    sae.cfg.metadata.hook_name = adapter.hook_name(LAYER)
    ids = torch.stack([w[:17] for w in windows["bos"]])  # equal lengths, BOS first
    ours = evaluate_all(sae, context(adapter, list(ids)), ["ce_recovered"])["ce_recovered"]
    per_tok = get_recons_loss(sae, adapter.model, ActivationScaler(), ids, compute_kl=False,
                              compute_ce_loss=True, ignore_tokens=[BOS])
    keep = (ids != BOS)[:, :-1]
    ref = {k: v[keep].mean().item() for k, v in per_tok.items()}
    score = (ref["ce_loss_with_ablation"] - ref["ce_loss_with_sae"]) / (
        ref["ce_loss_with_ablation"] - ref["ce_loss_without_sae"])
    assert ours["ce_clean"] == pytest.approx(ref["ce_loss_without_sae"], abs=1e-4)
    assert ours["ce_spliced"] == pytest.approx(ref["ce_loss_with_sae"], abs=1e-4)
    assert ours["ce_zero_ablation"] == pytest.approx(ref["ce_loss_with_ablation"], abs=1e-4)
    assert ours["ce_loss_score"] == pytest.approx(score, abs=1e-4)


def test_dead_latents_and_frequencies_on_constructed_case():
    # latents 0..3 read +-x0, +-x1; latents 4..7 read x2 with large negative biases so they never fire
    sae = StandardSAE(StandardSAEConfig(d_in=3, d_sae=8, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[0, 0], sae.W_enc[0, 1], sae.W_enc[1, 2], sae.W_enc[1, 3] = 1, -1, 1, -1
        sae.W_enc[2, 4:] = 1
        sae.b_enc.zero_()
        sae.b_enc[4:] = -100
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    x = torch.tensor([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0], [-1.0, -3.0, 5.0], [0.5, 0.0, 0.0]])
    ctx = ArtifactContext(model_name="toy", eval_activations=lambda: iter([x[:2], x[2:]]))
    res = evaluate_all(sae, ctx, ["dead_latents", "latent_frequency", "reconstruction"])
    assert res["dead_latents"]["n_dead"] == 4 and res["dead_latents"]["dead_share"] == 0.5
    assert res["latent_frequency"]["latent_frequency"] == [0.75, 0.25, 0.25, 0.25, 0, 0, 0, 0]
    assert res["reconstruction"]["l0"] == pytest.approx(6 / 4)


def test_massive_dims_excluded(adapter):
    x = torch.randn(500, 4)
    x[:, 0] *= 1000
    sae = identity_sae(4)
    with torch.no_grad():
        sae.W_dec[0, 0] = 1.01  # 1 % error on the huge dim only
        sae.W_dec[4, 0] = -1.01
    ctx = ArtifactContext(eval_activations=lambda: iter([x]), massive_dims=[0])
    r = evaluate_all(sae, ctx, ["reconstruction"])["reconstruction"]
    assert r["fvu"] > 1e-5 and r["fvu_excl_massive"] < 1e-10 and r["massive_dims"] == [0]


def test_missing_inputs_are_one_line_errors(adapter, windows):
    with pytest.raises(StageError, match="eval_windows"):
        evaluate_all(identity_sae(), ArtifactContext(model_name="tiny", adapter=adapter, layer=LAYER),
                     ["delta_loss"])
    with pytest.raises(StageError, match="eval_activations"):
        evaluate_all(identity_sae(), ArtifactContext(model_name="tiny"), ["reconstruction"])
    with pytest.raises(StageError, match="no non-special"):
        spliced_losses(adapter, LAYER, [torch.tensor([BOS, BOS])], identity_sae())
