"""Solvers recover a known affine relation; FLOPs and the training loss are recorded."""

import pytest
import torch

from stitchplug.config import StitchConfig
from stitchplug.stitch.data import TensorSource
from stitchplug.stitch.evaluate import eval_loss, evaluate_recon
from stitchplug.stitch.fit import fit_stitch

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(n=3000, dA=8, dB=12, seed=0, noise=0.0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, dA, generator=g) @ torch.randn(dA, dA, generator=g) * 0.5 + torch.randn(dA, generator=g)
    P = torch.randn(dA, dB, generator=g) / dA ** 0.5
    b = torch.randn(dB, generator=g)
    B = A @ P + b + noise * torch.randn(n, dB, generator=g)
    return A, B, P, b


def test_lstsq_recovers_affine_map_and_its_inverse():
    A, B, P, b = _pair()
    res = fit_stitch(TensorSource(A, B, 512, shuffle=False), 8, 12, StitchConfig(solver="lstsq", ridge=1e-10))
    st = res.stitch
    assert torch.allclose(st.P_up, P, atol=1e-4) and torch.allclose(st.b_up, b, atol=1e-4)
    # B = A P + b has rank dA, so down must invert it on the data: down(B) == A
    assert torch.allclose(st.down(B), A, atol=1e-3)
    assert res.info["train_tokens"] == 3000 and res.info["steps"] == 0
    assert res.info["train_loss"]["total"] < 1e-8
    assert res.info["flops"] > 0


def test_lstsq_handles_massive_dimension():
    """A dimension of ~7e4 with small spread must not wreck the closed form (float64 + standardising)."""
    g = torch.Generator().manual_seed(3)
    n, dA, dB = 4000, 10, 14
    A = torch.randn(n, dA, generator=g, dtype=torch.float64)
    A[:, 2] = A[:, 2] * 300 + 70_000
    P = torch.randn(dA, dB, generator=g, dtype=torch.float64)
    P[2] *= 1e-3
    B = A @ P + 5
    res = fit_stitch(TensorSource(A, B, 700, shuffle=False), dA, dB, StitchConfig(solver="lstsq", ridge=1e-9))
    pred = res.stitch.up(A.float()).double()
    fvu = ((pred - B) ** 2).sum() / ((B - B.mean(0)) ** 2).sum()
    assert fvu < 1e-6


def test_adam_recovers_affine_map_deterministically():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(1024, 6, generator=g) + 0.5
    P, b = torch.randn(6, 8, generator=g) / 6 ** 0.5, torch.randn(8, generator=g)
    B = A @ P + b
    cfg = StitchConfig(solver="adam", lr=3e-2, epochs=60, batch_size=128)
    r1 = fit_stitch(TensorSource(A, B, 128, seed=1), 6, 8, cfg, seed=4)
    r2 = fit_stitch(TensorSource(A, B, 128, seed=1), 6, 8, cfg, seed=4)
    assert torch.equal(r1.stitch.P_up, r2.stitch.P_up)
    assert torch.allclose(r1.stitch.P_up, P, atol=1e-3) and torch.allclose(r1.stitch.b_up, b, atol=1e-3)
    assert torch.allclose(r1.stitch.down(B), A, atol=1e-2)
    assert r1.info["steps"] == 60 * 8
    assert r1.info["flops"] == r1.info["adam_step_flops"] * 480
    hist = r1.info["history"]
    assert hist[-1]["loss"] < 1e-3 * hist[0]["loss"]


def test_adam_step_flops_match_analytic_count():
    A, B, _, _ = _pair(n=64, dA=6, dB=8)
    res = fit_stitch(TensorSource(A, B, 32), 6, 8, StitchConfig(solver="adam", epochs=1, batch_size=32))
    n, dA, dB = 32, 6, 8
    # forward: up(A), down(B), down(up A), up(down B) = 4 matmuls of 2*n*dA*dB each. Backward: the
    # first two only need the weight gradient (inputs are data), the round trips need weight and
    # input gradients: 1 + 1 + 2 + 2 = 6 more.
    assert res.info["adam_step_flops"] == 10 * 2 * n * dA * dB


def test_lstsq_plus_adam_starts_from_lstsq_and_does_not_get_worse():
    A, B, _, _ = _pair(noise=0.3)
    cfg = StitchConfig(solver="lstsq+adam", lr=1e-3, epochs=2, batch_size=256)
    res = fit_stitch(TensorSource(A, B, 256), 8, 12, cfg)
    assert res.info["lstsq_train_loss"]["total"] > 0
    # Adam minimises the full Eq. 3 (the closed form only the two direct terms)
    assert res.info["train_loss"]["total"] <= res.info["lstsq_train_loss"]["total"] * 1.001
    assert res.info["flops"] == res.info["lstsq_flops"] + res.info["adam_step_flops"] * res.info["steps"]


def test_eval_loss_and_recon_report_massive_dims():
    A, B, _, _ = _pair(noise=0.1)
    B[:, 3] += 500 * torch.randn(B.shape[0]).abs() + 2000
    res = fit_stitch(TensorSource(A, B, 512), 8, 12, StitchConfig(solver="lstsq"))
    held = TensorSource(A[:1000], B[:1000], 300, shuffle=False)
    loss = eval_loss(res.stitch, held)
    recon = evaluate_recon(res.stitch, held)
    assert recon["massive_dims"]["target"] == [3] and recon["massive_dims"]["source"] == []
    assert recon["loss"]["total"] == pytest.approx(loss["total"], rel=1e-9)
    assert recon["n_tokens"] == 1000
    for key in ("up", "down", "aba", "bab"):
        assert 0 <= recon[key]["fvu"] < 1 and recon[key]["fvu_per_dim_max"] >= recon[key]["fvu_per_dim"]
    assert recon["up"]["fvu_excl_massive"] != pytest.approx(recon["up"]["fvu"])


def test_lbfgs_refinement_lowers_full_eq3_below_closed_form():
    """The closed form solves only the direct terms; refining on the moments lowers the full Eq. 3."""
    g = torch.Generator().manual_seed(5)
    A = torch.randn(3000, 10, generator=g)
    B = torch.tanh(A @ torch.randn(10, 14, generator=g)) * 3 + 0.3 * torch.randn(3000, 14, generator=g)
    src = TensorSource(A, B, 500, shuffle=False)
    plain = fit_stitch(src, 10, 14, StitchConfig(solver="lstsq"))
    refined = fit_stitch(src, 10, 14, StitchConfig(solver="lstsq"), refine_iters=100)
    assert refined.info["solver"] == "lstsq+lbfgs"
    assert refined.info["flops"] == plain.info["flops"] + refined.info["refine"]["flops"] > plain.info["flops"]
    assert refined.info["train_loss"]["total"] < 0.99 * plain.info["train_loss"]["total"]
    assert refined.info["refine"]["after"] == pytest.approx(refined.info["train_loss"]["total"], rel=1e-5)
    # the exact moment-based loss agrees with a direct pass over the same tokens
    direct = eval_loss(refined.stitch, src)
    assert direct["total"] == pytest.approx(refined.info["train_loss"]["total"], rel=1e-5)


def _fit_on(device):
    A, B, _, _ = _pair(n=1500, seed=5, noise=0.1)
    lstsq = fit_stitch(TensorSource(A, B, 256, shuffle=False), 8, 12, StitchConfig(solver="lstsq", ridge=1e-8),
                       refine_iters=5, device=device)
    adam = fit_stitch(TensorSource(A, B, 256, seed=2), 8, 12, StitchConfig(solver="adam", lr=1e-2, epochs=3,
                                                                           batch_size=256), seed=1, device=device)
    return lstsq, adam


def test_fit_device_argument_keeps_results_and_returns_a_cpu_stitch():
    """The data passes run on ``device``; the stitch comes back on the CPU with the CPU fit's numbers."""
    ref = _fit_on("cpu")
    for got, want in zip(_fit_on(torch.device("cpu")), ref):
        for name in ("P_up", "b_up", "P_down", "b_down"):
            t = getattr(got.stitch, name)
            assert t.device.type == "cpu"
            assert torch.equal(t, getattr(want.stitch, name)), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU machines only)")
def test_fit_on_cuda_matches_cpu():
    ref = _fit_on("cpu")
    for got, want in zip(_fit_on("cuda"), ref):
        for name in ("P_up", "b_up", "P_down", "b_down"):
            t = getattr(got.stitch, name)
            assert t.device.type == "cpu"
            torch.testing.assert_close(t, getattr(want.stitch, name), rtol=1e-4, atol=1e-4)


def test_limit_tokens_reads_the_first_whole_batches_of_every_pass():
    from stitchplug.stitch.data import limit_tokens

    A, B, _, _ = _pair(n=3000)
    src = TensorSource(A, B, 512, shuffle=True, seed=3)
    assert limit_tokens(src, None, 512) is src
    lim = limit_tokens(TensorSource(A, B, 512, shuffle=True, seed=3), 1000, 512)
    assert lim.n_tokens == 1024  # two whole batches
    first, second = list(lim()), list(lim())
    assert [a.shape[0] for a, _ in first] == [512, 512] and len(second) == 2
    ref = list(src())  # the same seed: the limited pass is the unlimited pass's first two batches
    assert all(torch.equal(a, r[0]) and torch.equal(b, r[1]) for (a, b), r in zip(first, ref))
    assert not torch.equal(first[0][0], second[0][0])  # every pass reshuffles
    assert limit_tokens(src, 10 ** 6, 512).n_tokens == 3000  # more than there is: all of it
    with pytest.raises(ValueError, match="fit_tokens must be positive"):
        limit_tokens(src, 0, 512)


def test_fit_tokens_fits_on_fewer_tokens_for_fewer_flops():
    """The closed form's Gram products scale with the tokens read; on an exact affine relation the
    map fitted on a sixth of the tokens is the same map."""
    from stitchplug.stitch.data import limit_tokens

    A, B, P, b = _pair(n=3000)
    cfg = StitchConfig(solver="lstsq", ridge=1e-10, batch_size=256)
    full = fit_stitch(TensorSource(A, B, 256), 8, 12, cfg)
    part = fit_stitch(limit_tokens(TensorSource(A, B, 256), 500, 256), 8, 12, cfg)
    assert part.info["train_tokens"] == 512 and full.info["train_tokens"] == 3000
    assert part.info["flops"] < full.info["flops"] / 4
    assert torch.allclose(part.stitch.P_up, P, atol=1e-4) and torch.allclose(part.stitch.b_up, b, atol=1e-4)
