"""FLOPs of the init experiment: FlopCounterMode counts vs the analytic derivation (docs/flops.md), the
arms' ledger, and the stitch's fitting FLOPs read through Stitch.load."""

import pytest
import torch

from stitchplug.api import StageError, stitch_step_flops
from stitchplug.sae.step_flops import analytic_step_flops, measure_step_flops
from stitchplug_sae_init.ledger import ArmLedger, read_stitch_flops


@pytest.mark.parametrize("d,width,k,batch", [(16, 64, 4, 8), (64, 256, 8, 32), (96, 384, 16, 24)])
@pytest.mark.parametrize("b_dec_in", [False, True])
@pytest.mark.parametrize("aux", [False, True])
def test_counted_step_flops_match_analytic(d, width, k, batch, b_dec_in, aux):
    counted = measure_step_flops(d, width, k, batch, aux=aux, apply_b_dec_to_input=b_dec_in)
    analytic = analytic_step_flops(batch, d, width, aux=aux, apply_b_dec_to_input=b_dec_in)
    assert abs(counted - analytic) <= 0.10 * analytic
    # the per-token constant is what docs/flops.md derives: 10 (+2 with x - b_dec, +6 with AuxK)
    assert round(counted / (batch * d * width)) == 10 + 2 * b_dec_in + 6 * aux


def test_step_flops_scale_linearly_in_batch_and_width():
    base = measure_step_flops(32, 128, 4, 16)
    assert measure_step_flops(32, 128, 4, 32) == 2 * base
    assert measure_step_flops(32, 256, 4, 16) == 2 * base
    # k does not change the dense step's cost
    assert measure_step_flops(32, 128, 16, 16) == base


def test_stitch_step_flops_is_eq3_cost():
    """The core's count of one step of Stitch.loss (the one Eq. 3), which the init experiment reuses."""
    # 4 products forward (2 B dA dB each); backward: 2 weight grads + 2 (weight, input) pairs = 6 products
    assert stitch_step_flops(24, 40, 8) == 20 * 8 * 24 * 40


def test_arm_ledger_accumulates_offset_steps_and_aux():
    led = ArmLedger(step_flops=100, aux_step_flops=160, offset=1000)
    assert led.total == 1000
    assert led.pay_step() == 1100
    assert led.pay_step(aux_active=True) == 1260
    s = led.summary(source_sae_flops=5000)
    assert s["sae_flops"] == 260 and s["total_flops"] == 1260 and s["total_incl_source_sae"] == 6260
    assert "total_incl_source_sae" not in ArmLedger(100).summary(5000)  # scratch arm has no stitch/source


def test_read_stitch_flops_from_sidecar(tmp_path):
    from stitchplug.stitch.model import Stitch

    path = tmp_path / "stitch.safetensors"
    Stitch(4, 6).save(path, meta={"flops": 123456, "target_layer": 3})
    assert read_stitch_flops(path) == 123456


def test_read_stitch_flops_errors(tmp_path):
    from stitchplug.api import Stitch

    path = tmp_path / "stitch.safetensors"
    path.write_bytes(b"")
    with pytest.raises(StageError, match="no metadata sidecar"):
        read_stitch_flops(path)
    Stitch(4, 6).save(path, meta={"solver": "lstsq"})
    with pytest.raises(StageError, match="no 'flops'"):
        read_stitch_flops(path)
    (tmp_path / "stitch.safetensors.json").write_text("{not json")
    with pytest.raises(StageError, match="not valid JSON"):
        read_stitch_flops(path)


def test_training_does_not_leak_flops_outside_matmuls():
    """The optimizer step and decoder renormalisation add no counted FLOPs (elementwise only)."""
    from stitchplug.flops import count_step_flops
    from stitchplug.sae.trainer import TopKSAE

    sae = TopKSAE.random(32, 128, 4, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(16, 32)
    sae(x)[0].pow(2).sum().backward()
    assert count_step_flops(lambda: (opt.step(), sae.normalise_decoder_())) == 0
