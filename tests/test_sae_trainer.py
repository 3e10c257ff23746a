"""The one TopK SAE trainer (stitchplug.sae.trainer) against a known dictionary and the plain reference."""

import math

import pytest
import torch
from sae_lens import SAE

from sae_reference import reference_forward, train_reference
from stitchplug.errors import StageError
from stitchplug.metrics import recon_metrics
from stitchplug.sae.step_flops import analytic_step_flops
from stitchplug.sae.io import save_sae
from stitchplug.sae.trainer import TopKSAE, TopKTrainer, TrainerConfig, train_topk_sae

D, NF, K = 32, 48, 3


def dictionary_data(n_batches, batch=512, seed=0, offset=20.0):
    """Rows = sparse non-negative combinations (exactly K of NF unit atoms) plus a constant offset."""
    atoms = torch.randn(NF, D, generator=torch.Generator().manual_seed(1234))  # one fixed dictionary
    g = torch.Generator().manual_seed(seed)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    off = torch.zeros(D)
    off[0] = offset
    data = []
    for _ in range(n_batches):
        idx = torch.rand(batch, NF, generator=g).argsort(-1)[:, :K]
        codes = torch.zeros(batch, NF).scatter(-1, idx, 1.0 + 4.0 * torch.rand(batch, K, generator=g))
        data.append(codes @ atoms + off)
    return atoms, data


def recovered_share(atoms, W_dec, threshold=0.9):
    cos = (atoms / atoms.norm(dim=1, keepdim=True)) @ (W_dec / W_dec.norm(dim=1, keepdim=True)).T
    return float((cos.max(1).values > threshold).float().mean())


def test_trainer_recovers_a_known_dictionary(one_thread):
    atoms, data = dictionary_data(60)
    sae, summary = train_topk_sae(data, D, width=2 * NF, k=K, lr=3e-3, train_tokens=240 * 512, batch_size=512,
                                  progress=False)
    share = recovered_share(atoms, sae.W_dec.detach())
    assert share >= 0.9, share
    # the plain reference recipe recovers the same dictionary at the same budget: the bar is reachable
    ref = train_reference(data * 4, D, 2 * NF, K, lr=3e-3)
    assert recovered_share(atoms, ref[2]) >= 0.9
    x = dictionary_data(2, seed=1)[1][0]
    assert recon_metrics(x, sae(x))["fvu"] < 0.1
    assert summary["explained_variance_final"] > 0.9 > summary["explained_variance_first"]


def test_random_init_does_not_recover_it(one_thread):
    """The test above would fail for an untrained dictionary (it measures something)."""
    atoms, _ = dictionary_data(1)
    rnd = TopKSAE.random(D, 2 * NF, K, generator=torch.Generator().manual_seed(0))
    assert recovered_share(atoms, rnd.W_dec.detach()) < 0.2


def test_matches_the_reference_recipe_step_for_step(one_thread):
    """With the same init, data and lr, the trainer and the reference compute the same SAE."""
    _, data = dictionary_data(6, batch=256)
    mean = torch.cat(data).double().mean(0).float()
    ref = train_reference(data, D, 64, K, lr=1e-3, seed=0, b_dec_mean=mean)
    init = TopKSAE.random(D, 64, K, generator=torch.Generator().manual_seed(0), b_dec=mean, apply_b_dec_to_input=True)
    trainer = TopKTrainer(init, lr=1e-3)
    for x in data:
        trainer.step(x)
    assert torch.allclose(init.W_dec, ref[2], atol=1e-4) and torch.allclose(init.b_dec, ref[3], atol=1e-4)
    x = data[0]
    assert torch.allclose(init(x)[0], reference_forward(x, *ref, K), atol=1e-3)


def test_saved_sae_is_the_trained_function_and_flops_are_counted(tmp_path, one_thread):
    _, data = dictionary_data(4, batch=256)
    for normalize in ("none", "expected_norm"):
        sae, summary = train_topk_sae(data, D, width=64, k=K, lr=1e-3, train_tokens=2048, batch_size=256,
                                      normalize=normalize, progress=False, model_name="m", hook_name="blocks.1.hook_resid_pre")
        again = SAE.load_from_disk(save_sae(sae, tmp_path / normalize), device="cpu")
        x = data[1]
        assert torch.allclose(again(x), sae(x), atol=1e-4)
        assert recon_metrics(x, again(x))["fvu"] < 0.9
        # FlopCounterMode: one step of the dense TopK SAE is exactly 12 B d M (docs/flops.md)
        assert summary["step_flops"] == analytic_step_flops(256, D, 64, apply_b_dec_to_input=True)
        assert summary["train_flops"] == 8 * summary["step_flops"]
        assert (summary["input_scale"] == 1.0) == (normalize == "none")
    s = summary["input_scale"]
    assert s == pytest.approx(math.sqrt(D) / float(torch.cat(data).norm(dim=1).mean()), rel=1e-4)


def test_aux_k_reaches_dead_latents_and_is_paid_for(one_thread):
    """A latent that never wins TopK gets no gradient from the plain loss; AuxK moves it toward the
    residual, and the steps on which AuxK runs are charged their extra FLOPs."""
    _, data = dictionary_data(6, batch=256)
    rows = {}
    for coef in (0.0, 1.0):
        sae = TopKSAE.random(D, 64, K, generator=torch.Generator().manual_seed(0), b_dec=torch.cat(data).mean(0),
                             apply_b_dec_to_input=True)
        with torch.no_grad():
            sae.b_enc[1:] += 1e3  # latent 0 never makes the top K
        before = sae.W_dec[0].detach().clone()
        trainer = TopKTrainer(sae, lr=1e-3, aux_k_coef=coef, dead_window=1)
        aux = [trainer.step(x)["aux_active"] for x in data]
        rows[coef] = (sae.W_dec[0].detach() - before).norm(), aux, trainer
    assert rows[0.0][0] < 1e-6 and rows[1.0][0] > 1e-3
    assert rows[1.0][1] == [False] + [True] * 5 and not any(rows[0.0][1])
    plain, aux_t = rows[0.0][2], rows[1.0][2]
    assert aux_t.step_flops[True] > aux_t.step_flops[False] == plain.step_flops[False]
    assert aux_t.flops == aux_t.step_flops[False] + 5 * aux_t.step_flops[True]


def test_config_and_input_errors():
    _, data = dictionary_data(1, batch=64)
    with pytest.raises(StageError, match="empty"):
        train_topk_sae([], D, width=16, k=2, train_tokens=256, batch_size=128, progress=False)
    with pytest.raises(StageError, match="k=20"):
        train_topk_sae(data, D, width=16, k=20, train_tokens=256, batch_size=64, progress=False)
    with pytest.raises(StageError, match="lr"):
        train_topk_sae(data, D, width=16, k=2, lr=-1.0, train_tokens=256, batch_size=64, progress=False)
    assert TrainerConfig(width=4096, lr=1e-3, lr_width_ref=1024).effective_lr() == pytest.approx(5e-4)
