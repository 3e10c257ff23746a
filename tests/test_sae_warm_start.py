"""Issue 22: warm starts from the transferred SAE (fold, fold-rank, preserve, rescale, unit), the k-row sparse step, and the
trainer's stitched arm against a plain reference."""

import sys
from pathlib import Path

import pytest
import torch

from stitchplug.sae.step_flops import analytic_step_flops
from stitchplug.sae.topk import TopKSAE, warm_start
from stitchplug.sae.trainer import TopKTrainer, train_topk_sae
from stitchplug_sae_init.experiment import InitExperimentConfig, stitched_init, train_arm
from stitchplug_sae_init.ledger import ArmLedger
from stitchplug_sae_init.synthetic import make_synthetic, transferred_init

sys.path.insert(0, str(Path(__file__).parent))
from sae_reference import reference_ev_x, train_reference_from  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth():
    return make_synthetic(d=32, n_latents=96, k=4, n_train=4000, n_eval=1000, offset_scale=2.0, seed=3)


def _weights(synth, seed=0):
    # decoder row norms 0.5-2 (synthetic.transferred_init), like a real transfer's unequal norms
    return transferred_init(synth, k=4, rank=24, noise=0.5, seed=seed)


def _random_sae(d, m, k, bdi, seed):
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE.random(d, m, k, generator=g, b_dec=torch.randn(d, generator=g), apply_b_dec_to_input=bdi)
    with torch.no_grad():
        sae.b_enc.normal_(generator=g)
        sae.W_dec.mul_(0.5 + torch.rand(m, 1, generator=g))
    return sae


# --------------------------------------------------------------------------- sparse step


@pytest.mark.parametrize("bdi", [False, True])
def test_sparse_step_has_the_dense_loss_and_gradients(bdi):
    sae = _random_sae(24, 80, 6, bdi, seed=1)
    x = torch.randn(50, 24, generator=torch.Generator().manual_seed(2)) * 3
    out = {}
    for sparse in (False, True):
        sae.zero_grad(set_to_none=True)
        x_hat = sae(x, sparse=sparse)[0]
        loss = (x_hat - x).pow(2).sum(-1).mean()
        loss.backward()
        out[sparse] = (float(loss.detach()), {n: p.grad.clone() for n, p in sae.named_parameters()})
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-6)
    for n, g in out[False][1].items():
        assert torch.allclose(out[True][1][n], g, rtol=1e-4, atol=1e-5), n
        assert g.abs().max() > 0, n  # every parameter gets a gradient


def test_sparse_training_follows_dense_training_and_charges_dense_flops():
    x = [torch.randn(64, 16, generator=torch.Generator().manual_seed(s)) + 2 for s in range(20)]
    runs = {}
    for decode in ("dense", "sparse"):
        sae = _random_sae(16, 64, 4, True, seed=5)
        tr = TopKTrainer(sae, 1e-3, decode=decode)
        evs = [tr.step(xb)["ev"] for xb in x]
        runs[decode] = (sae, evs, tr.flops)
    (sd, ed, fd), (ss, es, fs) = runs["dense"], runs["sparse"]
    assert es == pytest.approx(ed, abs=1e-4)
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.allclose(getattr(ss, n), getattr(sd, n), atol=1e-4), n
    assert fs == fd == 20 * analytic_step_flops(64, 16, 64, apply_b_dec_to_input=True)


# --------------------------------------------------------------------------- warm starts


def test_preserve_keeps_the_function_and_the_row_norms(synth):
    w = _weights(synth)
    theta = TopKSAE.from_weights(w)
    norms = theta.W_dec.norm(dim=1).clone()
    assert norms.max() / norms.min() > 2  # unequal norms: fold would reorder TopK
    stats = warm_start(theta, "preserve")
    assert stats["decoder_norm_max"] == pytest.approx(float(norms.max()))
    tr = TopKTrainer(theta, 1e-3)
    for xb in synth.batches(128)():
        tr.step(xb)
    assert torch.allclose(theta.W_dec.norm(dim=1), norms, rtol=1e-5)
    with pytest.raises(Exception, match="unknown warm start"):
        warm_start(theta, "bogus")


@pytest.mark.parametrize("bdi", [False, True])
def test_step0_of_preserve_is_the_transferred_sae_and_fold_is_not(synth, bdi):
    """Acceptance (synthetic): step-0 EV of the stitched arm = the transferred SAE's EV on the same
    held-out rows within 1e-3 under ``preserve`` and ``rescale``; ``fold`` changes the TopK selection
    (agreement < 1)."""
    w = _weights(synth)
    cfg = InitExperimentConfig(apply_b_dec_to_input=bdi)
    _, keep = stitched_init(w, "preserve", cfg, synth.eval, [])
    for mode in ("rescale", "fold-rank", "unit"):
        _, other = stitched_init(w, mode, cfg, synth.eval, [])
        assert other["ev_step0"] == pytest.approx(other["ev_transferred"], abs=1e-3), mode
        assert other["topk_selection_agreement"] == 1.0, mode
    _, fold = stitched_init(w, "fold", cfg, synth.eval, [])
    assert keep["ev_step0"] == pytest.approx(keep["ev_transferred"], abs=1e-3)
    assert keep["topk_selection_agreement"] == 1.0
    assert fold["ev_transferred"] == keep["ev_transferred"]
    assert fold["topk_selection_agreement"] < 0.99
    assert abs(fold["ev_step0"] - fold["ev_transferred"]) > 1e-3
    # theta''s EV computed independently of the project's SAE class
    ev = reference_ev_x(synth.eval, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], w["k"])
    assert keep["ev_transferred"] == pytest.approx(ev, abs=1e-4)


@pytest.mark.parametrize("mode", ["rescale", "fold-rank", "unit"])
def test_unit_row_warm_starts_keep_the_function_dense_and_sparse_alike(synth, mode):
    """``rescale`` and ``fold-rank``: the trained rows stay unit norm, the fixed per-latent scale holds
    the step-0 norms (in the decode, or in the ranking), the plain export computes the function, and
    dense and sparse steps (AuxK included) follow each other."""
    w = _weights(synth)
    x = synth.eval[:300]
    runs = {}
    for decode in ("dense", "sparse"):
        theta = TopKSAE.from_weights(w, apply_b_dec_to_input=True)
        norms = theta.W_dec.norm(dim=1).clone()
        cols = theta.W_enc.norm(dim=0).clone()
        warm_start(theta, mode)
        assert (theta.scaled, theta.ranked) == (mode != "fold-rank", mode != "rescale")
        if mode == "unit":  # unit encoder columns; their norms in the output and ranking scales
            assert torch.allclose(theta.W_enc.norm(dim=0), torch.ones_like(cols), rtol=1e-5)
            assert torch.allclose(theta.out_scale, norms * cols) and torch.allclose(theta.rank_scale, 1 / cols)
        else:
            assert torch.allclose(theta.out_scale if mode == "rescale" else theta.rank_scale, norms)
        tr = TopKTrainer(theta, 1e-3, aux_k_coef=1 / 32, dead_window=3, decode=decode)
        infos = [tr.step(xb) for xb in list(synth.batches(128)())[:12]]
        runs[decode] = (theta, [i["ev"] for i in infos], any(i["aux_active"] for i in infos))
        assert torch.allclose(theta.W_dec.norm(dim=1), torch.ones_like(norms), rtol=1e-5)
        p = theta.plain_weights()  # a plain TopK SAE (ranks pre, decodes z @ W_dec) with the same function
        plain = TopKSAE(p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"], theta.k, apply_b_dec_to_input=True)
        assert torch.allclose(plain.W_dec.norm(dim=1), norms, rtol=1e-5)
        with torch.no_grad():
            assert torch.allclose(plain(x)[0], theta(x)[0], atol=1e-4)
    (sd, ed, aux_d), (ss, es, aux_s) = runs["dense"], runs["sparse"]
    assert aux_d and aux_s  # the AuxK step ran too, through the same ranking and decode
    assert es == pytest.approx(ed, abs=1e-4)
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.allclose(getattr(ss, n), getattr(sd, n), atol=1e-4), n


def test_train_topk_sae_applies_the_warm_start(synth):
    w = _weights(synth)
    batches = list(synth.batches(128)())[:3]
    for mode in ("fold", "fold-rank", "preserve", "rescale", "unit"):
        init = TopKSAE.from_weights(w)
        norms = init.W_dec.norm(dim=1).clone()
        sae, summary = train_topk_sae(batches, 32, init=init, warm_start=mode, lr=1e-4, batch_size=128,
                                      train_tokens=3 * 128, progress=False)
        got = sae.W_dec.detach().norm(dim=1)
        expect = torch.ones_like(norms) if mode == "fold" else norms  # fold-rank: exported as theta' is
        assert torch.allclose(got, expect, rtol=1e-5), mode
        assert summary["warm_start"] == mode
        # the exported sae-lens SAE computes what was trained (rescale: the scale folded into W_dec)
        x = synth.eval[:200]
        with torch.no_grad():
            assert torch.allclose(sae.decode(sae.encode(x)), init(x)[0], atol=1e-4), mode


# --------------------------------------------------------------------------- the plain reference


@pytest.mark.parametrize("mode", ["fold", "fold-rank", "preserve", "rescale", "unit"])
def test_trainer_stitched_arm_equals_the_plain_reference(synth, mode):
    """With the encoder reading x (as theta' does), the trainer's stitched arm IS the ~30-line reference
    (tests/sae_reference.py): same data, lr and steps give the same weights and held-out EV."""
    w = _weights(synth)
    batches = list(synth.batches(128)())[:25]
    cfg = InitExperimentConfig(steps=25, batch_size=128, lr=3e-3, eval_every=25, apply_b_dec_to_input=False,
                               warm_start=mode)
    theta, _ = stitched_init(w, mode, cfg, synth.eval, [])
    res = train_arm(theta, iter(batches), synth.eval, cfg, ArmLedger(1), [])
    ref = train_reference_from(batches, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], w["k"], lr=3e-3, mode=mode)
    plain = theta.plain_weights()
    for got, want in zip((plain["W_enc"], plain["b_enc"], plain["W_dec"], plain["b_dec"]), ref):
        assert torch.allclose(got.detach(), want, atol=2e-4)
    assert res["curve"][-1]["ev"] == pytest.approx(reference_ev_x(synth.eval, *ref, w["k"]), abs=1e-3)
    assert res["curve"][-1]["update"]["W_enc"] > 0
