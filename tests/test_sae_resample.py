"""Resampling dead latents (stitchplug.sae.resample, ``resample_every``): which latents are redrawn,
that they fire afterwards, what is kept, what is charged, and the init experiment's use of it."""

import json

import pytest
import torch

from stitchplug.sae.resample import MARGIN, pool_flops, resample_dead, score_pool
from stitchplug.sae.topk import TopKSAE, warm_start
from stitchplug.sae.trainer import TopKTrainer, train_topk_sae

pytestmark = pytest.mark.usefixtures("one_thread")

D, M, K = 24, 64, 4


def _data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(2 * M, D, generator=g)
    idx = torch.rand(n, 2 * M, generator=g).argsort(-1)[:, :K]
    codes = torch.zeros(n, 2 * M).scatter(-1, idx, 1.0 + torch.rand(n, K, generator=g))
    return codes @ atoms + 3.0


def _killed_sae(mode=None, n_dead=10):
    """A random SAE whose first ``n_dead`` latents can never win TopK (huge negative bias)."""
    sae = TopKSAE.random(D, M, K, generator=torch.Generator().manual_seed(1), b_dec=torch.full((D,), 3.0),
                         apply_b_dec_to_input=True)
    if mode is not None:
        with torch.no_grad():
            sae.W_dec.mul_(torch.linspace(0.5, 4.0, M)[:, None])
        warm_start(sae, mode)
    with torch.no_grad():
        sae.b_enc[:n_dead] = -1e4
    dead = torch.zeros(M, dtype=torch.bool)
    dead[:n_dead] = True
    return sae, dead


@pytest.mark.parametrize("mode", [None, "rescale", "fold-rank", "preserve", "unit"])
def test_a_resampled_latent_starts_above_the_topk_threshold_of_its_token(mode):
    sae, dead = _killed_sae(mode)
    pool = _data(512)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    fixed = {n: getattr(sae, n).clone() for n in ("out_scale", "rank_scale", "row_norm")}
    before = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec")}
    assert not torch.isin(sae.select(sae.pre(pool)), torch.nonzero(dead).flatten()).any()  # really dead
    res0, thr0 = score_pool(sae, pool)
    latents, flops = resample_dead(sae, opt, pool, dead, torch.Generator().manual_seed(0))
    assert sorted(latents.tolist()) == list(range(10)) and flops == pool_flops(512, D, M)
    # each row is the residual direction of one drawn token, its encoder column that token's centred
    # input direction, and there its ranked pre-activation is MARGIN times the token's TopK threshold
    # before the resampling
    with torch.no_grad():
        cos = sae.W_dec[latents] / sae.W_dec[latents].norm(dim=1, keepdim=True) @ (res0 / res0.norm(dim=1, keepdim=True)).T
        best, rows = cos.max(1)
        assert torch.allclose(best, torch.ones_like(best), atol=1e-5) and len(set(rows.tolist())) == 10
        centred = pool[rows] - sae.b_dec
        enc = sae.W_enc[:, latents].T
        assert torch.allclose((enc / enc.norm(dim=1, keepdim=True) * centred / centred.norm(dim=1, keepdim=True)).sum(1),
                              torch.ones(10), atol=1e-5)
        pre = sae.pre(pool)
        ranked = pre / sae.rank_scale if sae.ranked else pre
        assert torch.allclose(ranked[rows, latents], MARGIN * thr0[rows], rtol=1e-4)
    # the rows have the latent's fixed norm; the buffers a warm start set are kept
    assert torch.allclose(sae.W_dec[latents].norm(dim=1), sae.row_norm[latents], atol=1e-5)
    for n, v in fixed.items():
        assert torch.equal(getattr(sae, n), v), n
    # every other latent is untouched
    keep = torch.ones(M, dtype=torch.bool)
    keep[latents] = False
    assert torch.equal(sae.W_enc.detach()[:, keep], before["W_enc"][:, keep])
    assert torch.equal(sae.W_dec.detach()[keep], before["W_dec"][keep])
    assert torch.equal(sae.b_enc.detach()[keep], before["b_enc"][keep])


@pytest.mark.parametrize("mode", [None, "rescale", "fold-rank", "preserve", "unit"])
def test_a_single_resampled_latent_fires_on_its_token(mode):
    """Alone (no other redrawn latent competing) a redrawn latent wins TopK on the token it came from."""
    for seed in range(5):
        sae, dead = _killed_sae(mode, n_dead=1)
        pool = _data(256, seed=seed)
        latents, _ = resample_dead(sae, torch.optim.Adam(sae.parameters()), pool, dead,
                                   torch.Generator().manual_seed(seed))
        assert latents.tolist() == [0]
        assert bool(torch.isin(torch.tensor(0), sae.select(sae.pre(pool)))), seed


def test_no_dead_latent_changes_nothing_and_costs_nothing():
    sae, _ = _killed_sae(n_dead=0)
    before = {n: t.detach().clone() for n, t in sae.state_dict().items()}
    latents, flops = resample_dead(sae, torch.optim.Adam(sae.parameters()), _data(64), torch.zeros(M, dtype=torch.bool))
    assert latents.numel() == 0 and flops == 0
    assert all(torch.equal(before[n], t) for n, t in sae.state_dict().items())


def test_draws_favour_badly_reconstructed_tokens_and_reset_adam_moments():
    sae, dead = _killed_sae(n_dead=3)
    pool = _data(256)
    pool[7] += 200.0  # one token the SAE reconstructs far worse than the rest
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x_hat, _, _ = sae(pool)
    (x_hat - pool).pow(2).sum().backward()
    opt.step()
    res, _ = score_pool(sae, pool)
    latents, _ = resample_dead(sae, opt, pool, dead, torch.Generator().manual_seed(0))
    u7 = res[7] / res[7].norm()
    assert max(float(sae.W_dec[i] @ u7) for i in latents) > 0.99  # the worst token was drawn
    for p, idx in ((sae.W_dec, (latents,)), (sae.W_enc, (slice(None), latents)), (sae.b_enc, (latents,))):
        st = opt.state[p]
        assert float(st["exp_avg"][idx].abs().sum()) == 0 and float(st["exp_avg_sq"][idx].abs().sum()) == 0
        assert float(st["exp_avg_sq"].abs().sum()) > 0  # the others keep theirs


def test_the_trainer_revives_dead_latents_and_charges_the_pool():
    """With resampling a warm start whose latents died fires them again; without it they stay dead."""
    pool = [_data(128, seed=s) for s in range(30)]
    out = {}
    for every in (None, 5):
        sae, _ = _killed_sae("rescale", n_dead=16)
        tr = TopKTrainer(sae, 1e-3, dead_window=3, resample_every=every, resample_pool=4, seed=0)
        infos = [tr.step(x) for x in pool]
        out[every] = (tr, infos)
    plain, resampled = out[None][0], out[5][0]
    assert plain.dead_fraction() >= 16 / M and plain.resampled == 0 and plain.resample_flops == 0
    assert resampled.resampled >= 16 and resampled.dead_fraction() < plain.dead_fraction()
    charged = sum(i["extra_flops"] for i in out[5][1])
    assert charged == resampled.resample_flops > 0
    assert resampled.flops == plain.flops + charged  # the steps cost the same; the pool is charged on top
    assert [i["resampled"] > 0 for i in out[5][1]].index(True) == 4  # the first resampling step


def test_train_topk_sae_reports_resampling_and_is_seeded():
    data = [_data(128, seed=s) for s in range(12)]
    runs = [train_topk_sae(data, D, width=M, k=K, lr=3e-3, train_tokens=12 * 128, batch_size=128, dead_window=2,
                           resample_every=3, progress=False, seed=0)[1] for _ in range(2)]
    assert runs[0]["resampled_latents"] == runs[1]["resampled_latents"]
    assert runs[0]["curve"] == runs[1]["curve"] and runs[0]["resample_every"] == 3
    assert runs[0]["resample_flops"] == (runs[0]["resampled_latents"] > 0) * runs[0]["resample_flops"]


def test_resampling_refuses_torchrun(monkeypatch):
    from stitchplug import dist
    from stitchplug.errors import StageError

    monkeypatch.setattr(dist, "rank_world", lambda: (0, 2))
    sae, _ = _killed_sae()
    with pytest.raises(StageError, match="one process only"):
        TopKTrainer(sae, 1e-3, resample_every=5)


def test_the_init_experiment_charges_resampling_to_the_arm_and_logs_dead_latents():
    from stitchplug_sae_init.experiment import InitExperimentConfig, train_arm
    from stitchplug_sae_init.ledger import ArmLedger

    batches = [_data(128, seed=s) for s in range(20)]
    x_eval = _data(256, seed=99)
    runs = {}
    for every in (None, 5):
        sae, _ = _killed_sae("rescale", n_dead=16)
        cfg = InitExperimentConfig(steps=20, batch_size=128, lr=1e-3, eval_every=5, dead_window=3,
                                   resample_every=every, resample_pool=4)
        runs[every] = train_arm(sae, iter(batches), x_eval, cfg, ArmLedger(1000, 0, 0))
    plain, res = runs[None], runs[5]
    assert plain["ledger"]["extra_flops"] == 0 and res["ledger"]["extra_flops"] > 0
    assert res["ledger"]["total_flops"] == plain["ledger"]["total_flops"] + res["ledger"]["extra_flops"]
    assert res["resampled_latents"] >= 16 and plain["resampled_latents"] == 0
    assert all("dead" in p for p in res["curve"][1:])
    assert res["curve"][-1]["dead"] < plain["curve"][-1]["dead"]
    assert [p["flops"] for p in res["curve"]] != [p["flops"] for p in plain["curve"]]
    json.dumps(res)  # JSON-ready
