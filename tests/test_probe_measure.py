"""Issue 25 without models: latent selection rules against the plain reference, the seeded
sae-probes draw, the control SAEs, coverage / recovery / failure bookkeeping, and the stale
transferred-SAE check."""

import numpy as np
import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig

import probe_reference as ref
from stitchplug.api import Stitch, StitchplugError
from stitchplug_probe import controls, coverage, probes, tasks
from stitchplug_probe.arms import run_task


def _sae(d=12, width=40, k=4, seed=0, apply_b_dec=True):
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d, d_sae=width, k=k, apply_b_dec_to_input=apply_b_dec))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return sae


def test_selection_absolute_by_default_signed_on_request():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    X = rng.normal(size=(100, 6))
    X[:, 2] -= 3 * y  # fires less on the positive class: the strongest by absolute difference
    X[:, 4] += 1 * y
    assert probes.top_k(X, y, 1).tolist() == [2]
    assert probes.top_k(X, y, 1, "signed").tolist() == [4]
    for signed in (False, True):
        np.testing.assert_array_equal(probes.top_k(X, y, 3, "signed" if signed else "abs"),
                                      ref.select(X, y, 3, signed))
    with pytest.raises(StitchplugError, match="unknown latent selection"):
        probes.top_k(X, y, 1, "max")


@pytest.mark.parametrize("selection", ["abs", "signed"])
def test_run_task_matches_the_reference_per_arm(selection):
    """The project's arms against tests/probe_reference.py on synthetic codes, every arm and k."""
    rng = np.random.default_rng(1)
    n = 160
    y = np.repeat([0, 1], n // 2)[rng.permutation(n)]
    codes = {}
    for i, key in enumerate(("source", "transferred", "native", "random", "random_unit", "shuffled")):
        Z = np.maximum(rng.normal(size=(n, 30)) - 1.0, 0)
        Z[:, i] += (0.8 - 0.3 * i) * y * (1 if i % 2 else -1)  # signs differ between the SAEs
        codes[key] = Z
    dense = rng.normal(size=(n, 5)) + y[:, None]
    feats = {"A": {"dense": dense, "source": codes["source"]},
             "B": {"dense": dense, **{k: v for k, v in codes.items() if k != "source"}}}
    res = run_task(feats, y, P_down=np.eye(5), b_down=np.zeros(5), ks=(1, 5, 20), seed=3, selection=selection)
    tr, te = ref.split(y, 0.3, 3)
    for k in (1, 5, 20):
        want = ref.sparse_arms(codes["source"], {k_: v for k_, v in codes.items() if k_ != "source"}, y, tr, te, k,
                               signed=selection == "signed")
        assert set(want) == set(res["sparse"])
        for arm, acc in want.items():
            assert abs(res["sparse"][arm][str(k)]["accuracy"] - acc) <= 0.01, (arm, k)


def test_draw_is_seeded_binary_and_recorded():
    names = tasks.binary_sae_probes()
    assert len(names) >= 30 and "2_hist_fig_birthyear" not in names  # a regression dataset is left out
    a = tasks.expand_specs(["sae-probes:draw:30:7"])
    assert a == tasks.expand_specs(["sae-probes:draw:30:7"]) and len(set(a)) == 30
    assert a != tasks.expand_specs(["sae-probes:draw:30:8"])
    assert tasks.expand_specs(["sae-probes:draw:5"]) == tasks.expand_specs(["sae-probes:draw:5:0"])
    assert all(s.startswith("sae-probes:") and s.split(":", 1)[1] in names for s in a)
    mixed = tasks.expand_specs(["wiki-topic:Math", "sae-probes:draw:3:1"])
    assert mixed[0] == "wiki-topic:Math" and len(mixed) == 4
    t = tasks.load_task(a[0], max_examples=40, seed=0)
    assert set(np.unique(t.labels)) == {0, 1}


@pytest.mark.parametrize("spec, needle", [
    ("sae-probes:draw:x", "must look like sae-probes:draw:N"),
    ("sae-probes:draw:3:1:2", "must look like sae-probes:draw:N"),
    ("sae-probes:draw:0", "N must be at least 1"),
    ("sae-probes:draw:100000", "cannot draw 100000"),
])
def test_bad_draws_one_line(spec, needle):
    with pytest.raises(StitchplugError, match=needle):
        tasks.expand_specs([spec])


def test_draw_overlapping_a_listed_task_is_refused():
    first = tasks.expand_specs(["sae-probes:draw:1:4"])[0]
    with pytest.raises(StitchplugError, match="listed twice"):
        tasks.expand_specs([first, "sae-probes:draw:1:4"])
    with pytest.raises(StitchplugError, match="expand it first"):
        tasks.load_task("sae-probes:draw:2")


def test_config_accepts_a_draw_and_rejects_a_bad_one():
    from pydantic import ValidationError

    from stitchplug_probe.config import ProbeConfig

    assert ProbeConfig(tasks=["sae-probes:draw:30:0"]).tasks == ["sae-probes:draw:30:0"]
    with pytest.raises(ValidationError, match="must look like"):
        ProbeConfig(tasks=["sae-probes:draw:thirty"])


@torch.no_grad()
def test_random_unit_sae_reads_random_unit_directions():
    mean = torch.randn(12)
    sae = controls.random_unit_sae(12, 40, 4, mean, seed=5)
    u = sae.W_enc.detach().T.double()
    np.testing.assert_allclose(u.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    x = torch.randn(7, 12)
    pre = (x - mean).double() @ u.T
    want = torch.zeros_like(pre).scatter(1, pre.topk(4, dim=1).indices, pre.topk(4, dim=1).values.relu())
    np.testing.assert_allclose(sae.encode(x).double().numpy(), want.numpy(), atol=1e-5)
    other = controls.random_unit_sae(12, 40, 4, mean, seed=6)
    assert not torch.allclose(other.W_enc, sae.W_enc)


@torch.no_grad()
def test_the_random_unit_control_is_a_draw_independent_of_the_random_sae():
    """random_B (the SAE run's random SAE) already reads random unit directions; a control drawn from
    the same seed encodes exactly like it (so the two arms gave equal accuracies on every task), and
    add_controls draws from another seed."""
    from stitchplug.api import random_sae_like
    from stitchplug_probe.saes import RANDOM_UNIT_SEED_OFFSET, add_controls

    nat = _sae(d=12, width=40, k=4, seed=1)
    with torch.no_grad():
        nat.W_dec.mul_(torch.linspace(0.5, 6.0, 40)[:, None])  # decoder norms far from 1
    mean = torch.randn(12, generator=torch.Generator().manual_seed(2))
    seed = 7
    saes = {"native": nat, "transferred": nat, "random": random_sae_like(nat, b_dec=mean, seed=seed)}
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(3)) * 3
    same = controls.random_unit_sae(12, 40, 4, mean, seed=seed, like=nat)
    torch.testing.assert_close(same.encode(x), saes["random"].encode(x), atol=1e-4, rtol=1e-4)
    origin: dict = {}
    add_controls(saes, origin, seed=seed)
    assert RANDOM_UNIT_SEED_OFFSET != 0 and f"seed {seed + RANDOM_UNIT_SEED_OFFSET}" in origin["random_unit"]
    codes, rand = saes["random_unit"].encode(x), saes["random"].encode(x)
    assert (codes != 0).sum(1).eq(4).all()
    assert (codes.ne(0) & rand.ne(0)).float().mean() < 0.5 * rand.ne(0).float().mean()  # other latents fire
    torch.testing.assert_close(saes["random_unit"].b_dec, mean.to(saes["random_unit"].b_dec.dtype))


@pytest.mark.parametrize("apply_b_dec", [True, False])
@torch.no_grad()
def test_shuffled_sae_keeps_each_latents_weights_not_their_dimensions(apply_b_dec):
    nat = _sae(apply_b_dec=apply_b_dec)
    sh = controls.shuffled_sae(nat, seed=2)
    for a, b in ((nat.W_enc.T, sh.W_enc.T), (nat.W_dec, sh.W_dec)):
        np.testing.assert_allclose(a.norm(dim=1).detach().numpy(), b.norm(dim=1).detach().numpy(), rtol=1e-5)
        np.testing.assert_allclose(a.sort(dim=1).values.detach().numpy(), b.sort(dim=1).values.detach().numpy(),
                                   rtol=1e-5)
    # encoder and decoder of a latent moved together: their inner product is kept
    np.testing.assert_allclose((nat.W_enc.T * nat.W_dec).sum(1).detach().numpy(),
                               (sh.W_enc.T * sh.W_dec).sum(1).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(nat.W_enc, sh.W_enc)
    # where the original reads no input (x = b_dec when it subtracts b_dec, else x = 0) the copy
    # gives the same codes: only the reading of the input is shuffled, not the biases
    x = nat.b_dec.detach()[None] if apply_b_dec else torch.zeros(1, 12)
    np.testing.assert_allclose(sh.encode(x).detach().numpy(), nat.encode(x).detach().numpy(), atol=1e-4)


def _stitch(d_a, d_b, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(d_a, d_b, generator=g)
    st = Stitch(d_a, d_b)
    with torch.no_grad():
        st.P_up.copy_(M), st.b_up.zero_(), st.P_down.copy_(torch.linalg.pinv(M.double()).float()), st.b_down.zero_()
    return st, M


def test_stale_transferred_sae_is_detected():
    from stitchplug_probe.saes import same_function
    from stitchplug.sae.transfer import transfer_sae

    st, _ = _stitch(12, 20)
    src, other = _sae(seed=0), _sae(seed=1)
    fresh = transfer_sae(src, st, "up", check_model=False)
    assert same_function(fresh, transfer_sae(src, st, "up", check_model=False))
    assert not same_function(fresh, transfer_sae(other, st, "up", check_model=False))
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    permuted = transfer_sae(src, st, "up", check_model=False)
    with torch.no_grad():  # the same latents in another order: A's indices would read other latents
        permuted.W_enc.copy_(permuted.W_enc[:, perm]), permuted.b_enc.copy_(permuted.b_enc[perm])
    assert not same_function(fresh, permuted)


@torch.no_grad()
def test_task_coverage_exact_stitch_and_sae_fvu():
    from stitchplug.api import Encoded

    st, M = _stitch(12, 20, seed=3)
    g = torch.Generator().manual_seed(4)
    ra, rb, encs = [], [], []
    for n in (5, 9):
        xa = torch.randn(n, 12, generator=g)
        ra.append(xa)
        rb.append(xa @ M)  # B = A mapped: T_down(h_B) = h_A exactly
        ends = torch.tensor([-1] + list(range(3, 3 * n, 3)))
        special = torch.tensor([True] + [False] * (n - 1))
        encs.append((Encoded(torch.arange(n), ends, special), Encoded(torch.arange(n), ends, special)))
    src = _sae(d=12)
    cov = coverage.task_coverage({"A": ra, "B": rb, "enc": encs}, st.P_down.double().numpy(),
                                 st.b_down.double().numpy(), {"source": src}, {})
    assert cov["stitch_down"]["n_tokens"] == 4 + 8 and cov["stitch_down"]["fvu"] < 1e-6
    x = torch.cat([r[1:] for r in ra])
    want = ((src.decode(src.encode(x)) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    assert cov["sae"]["source"]["fvu"] == pytest.approx(want, rel=1e-4)


def test_recovery_and_failures():
    def task(retrain, native, dense_b, st_fvu, sae_fvu):
        return {"sparse": {"transfer_retrain": {"5": {"accuracy": retrain}}, "native_B": {"5": {"accuracy": native}},
                           "source_A": {"5": {"accuracy": 0.8}}},
                "dense": {"dense_A": {"accuracy": 0.9}, "dense_B": {"accuracy": dense_b}},
                "coverage": {"stitch_down": {"fvu_excl_massive": st_fvu},
                             "sae": {"source": {"fvu_excl_massive": sae_fvu}}}}

    per = {"ok": task(0.80, 0.82, 0.9, 0.2, 0.3), "stitchy": task(0.60, 0.80, 0.9, 0.6, 0.1),
           "saey": task(0.55, 0.80, 0.9, 0.1, 0.5), "flat": task(0.50, 0.70, 0.51, 0.2, 0.3)}
    for r in per.values():
        r["recovery"] = coverage.recovery(r)
    assert per["ok"]["recovery"]["transfer_retrain"]["5"] == pytest.approx(0.3 / 0.4)
    assert per["ok"]["recovery"]["source_A"]["5"] == pytest.approx(0.3 / 0.4)  # against dense A
    assert per["flat"]["recovery"]["native_B"]["5"] is None  # dense B at chance: undefined
    summ = coverage.recovery_summary(per)
    assert summ["transfer_retrain"]["n_tasks"] == 3
    fails = {f["task"]: f["reason"] for f in coverage.failures(per)}
    assert fails == {"stitchy": "stitch", "saey": "sae", "flat": "selection"}
