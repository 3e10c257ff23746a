"""Stitch module: Eq. 3 loss, save/load with exactly four tensors, refusal of mismatches."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from stitchplug.errors import StageError
from stitchplug.stitch.model import Stitch, sidecar_path
from stitchplug.stitch.moments import Moments


def _reference_loss(st, hA, hB, alpha):
    P_up, b_up, P_dn, b_dn = (t.detach().double() for t in (st.P_up, st.b_up, st.P_down, st.b_down))
    hA, hB = hA.double(), hB.double()
    up = hA @ P_up + b_up
    dn = hB @ P_dn + b_dn
    terms = [((up - hB) ** 2).sum() / hB.numel(), ((dn - hA) ** 2).sum() / hA.numel(),
             ((up @ P_dn + b_dn - hA) ** 2).sum() / hA.numel(), ((dn @ P_up + b_up - hB) ** 2).sum() / hB.numel()]
    return float(terms[0] + terms[1] + alpha * (terms[2] + terms[3])), [float(t) for t in terms]


def _random_stitch(dA=6, dB=9, seed=1):
    st = Stitch(dA, dB, seed=seed)
    with torch.no_grad():
        st.b_up.normal_()
        st.b_down.normal_()
    return st


def test_biases_start_at_zero_and_shapes():
    st = Stitch(5, 7)
    assert st.P_up.shape == (5, 7) and st.P_down.shape == (7, 5)
    assert torch.all(st.b_up == 0) and torch.all(st.b_down == 0)
    assert st.up(torch.randn(3, 5)).shape == (3, 7)
    assert st.down(torch.randn(3, 7)).shape == (3, 5)


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_loss_matches_reference_and_moments(alpha):
    torch.manual_seed(0)
    st = _random_stitch()
    hA, hB = torch.randn(50, 6) * 3 + 1, torch.randn(50, 9) - 2
    total, parts = st.loss(hA.double(), hB.double(), alpha)
    ref_total, ref_terms = _reference_loss(st, hA, hB, alpha)
    assert float(total.detach()) == pytest.approx(ref_total, rel=1e-10)
    assert [parts[k] for k in ("up", "down", "aba", "bab")] == pytest.approx(ref_terms, rel=1e-10)
    mom = Moments(6, 9)
    mom.update(hA[:20], hB[:20])
    mom.update(hA[20:], hB[20:])
    assert mom.loss(st, alpha)["total"] == pytest.approx(ref_total, rel=1e-8)


def test_save_load_round_trip_exactly_four_tensors(tmp_path):
    st = _random_stitch()
    path = st.save(tmp_path / "s.safetensors", {"source_model": "a", "target_model": "b", "source_layer": 1,
                                                "target_layer": 2, "flops": 123, "solver": "lstsq"})
    assert set(load_file(str(path))) == {"P_up", "b_up", "P_down", "b_down"}
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["d_source"] == 6 and meta["d_target"] == 9 and meta["format_version"] == 1 and meta["flops"] == 123
    back = Stitch.load(path, expect={"source_model": "a", "target_model": "b", "source_layer": 1, "d_target": 9})
    for name in ("P_up", "b_up", "P_down", "b_down"):
        assert torch.equal(getattr(back, name), getattr(st, name))


@pytest.mark.parametrize("key,value,needle", [
    ("target_model", "other", "target_model='b' but is used with target_model='other'"),
    ("source_layer", 3, "source_layer=1"),
    ("d_source", 7, "d_source=6"),
])
def test_load_refuses_metadata_mismatch(tmp_path, key, value, needle):
    path = _random_stitch().save(tmp_path / "s.safetensors", {"source_model": "a", "target_model": "b",
                                                             "source_layer": 1, "target_layer": 2})
    with pytest.raises(StageError) as err:
        Stitch.load(path, expect={key: value})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_load_refuses_bad_shapes_and_extra_tensors(tmp_path):
    path = _random_stitch().save(tmp_path / "s.safetensors")
    tensors = load_file(str(path))
    tensors["P_up"] = torch.zeros(6, 8)
    save_file(tensors, str(path))
    with pytest.raises(StageError, match=r"P_up has shape \(6, 8\), expected \(6, 9\)"):
        Stitch.load(path)
    tensors["P_up"] = torch.zeros(6, 9)
    tensors["extra"] = torch.zeros(1)
    save_file(tensors, str(path))
    with pytest.raises(StageError, match="expected exactly"):
        Stitch.load(path)


def test_load_refuses_missing_files(tmp_path):
    with pytest.raises(StageError, match="not found"):
        Stitch.load(tmp_path / "none.safetensors")
    path = _random_stitch().save(tmp_path / "s.safetensors")
    sidecar_path(path).unlink()
    with pytest.raises(StageError, match="sidecar"):
        Stitch.load(path)
