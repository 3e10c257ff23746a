"""Eq. 6 transfer of SAELens SAEs through a stitch, saving/loading, validation, random baseline."""

import json
from types import SimpleNamespace

import pytest
import torch
from sae_lens import (SAE, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE,
                      TopKSAEConfig)

from stitchplug.errors import StageError, StitchplugError
from stitchplug.stitch.model import Stitch
from stitchplug.sae.io import load_sae, read_sidecar, save_sae
from stitchplug.sae.transfer import check_compatible, random_sae_like, transfer_sae

DA, DB, M = 12, 20, 48


def make_sae(arch: str, apply_b_dec: bool, rescale: bool = False, seed: int = 0, d_in: int = DA) -> SAE:
    torch.manual_seed(seed)
    if arch == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=M, k=6, apply_b_dec_to_input=apply_b_dec,
                                    rescale_acts_by_decoder_norm=rescale))
    elif arch == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=M, apply_b_dec_to_input=apply_b_dec))
    else:
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=M, apply_b_dec_to_input=apply_b_dec))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
        if hasattr(sae, "threshold"):
            sae.threshold.uniform_(0.0, 2.0)
    sae.cfg.metadata.model_name = "model-a"
    sae.cfg.metadata.hook_name = "blocks.3.hook_resid_pre"
    return sae


def make_stitch(meta: bool = True) -> Stitch:
    st = Stitch(DA, DB, seed=1)
    with torch.no_grad():
        st.b_up.normal_()
        st.b_down.normal_()
    if meta:
        st.meta = {"source_model": "model-a", "target_model": "model-b", "source_layer": 3, "target_layer": 5}
    return st


CASES = [("topk", True, True), ("topk", False, True), ("topk", True, False), ("topk", False, False),
         ("standard", True, False), ("standard", False, False), ("jumprelu", True, False),
         ("jumprelu", False, False)]


@pytest.mark.parametrize("arch,apply_b_dec,rescale", CASES)
def test_eq6_matches_composition(arch, apply_b_dec, rescale):
    sae = make_sae(arch, apply_b_dec, rescale)
    st = make_stitch()
    new = transfer_sae(sae, st)
    h = torch.randn(200, DB) * 3
    ref = st.up(sae(st.down(h)))
    out = new(h)
    assert out.shape == (200, DB)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    # same codes, thresholds and k; no input bias; metadata names model B's hook
    assert torch.equal(new.encode(h) != 0, sae.encode(st.down(h)) != 0)
    assert type(new) is type(sae) and new.cfg.d_in == DB and new.cfg.d_sae == M
    assert new.cfg.apply_b_dec_to_input is False
    assert new.cfg.metadata.model_name == "model-b"
    assert new.cfg.metadata.hook_name == "blocks.5.hook_resid_pre"
    if arch == "jumprelu":
        assert torch.equal(new.threshold, sae.threshold)
    if arch == "topk":
        assert new.cfg.k == sae.cfg.k
        assert ((new.encode(h) != 0).sum(-1) <= 6).all()


def test_eq6_down_direction_and_duck_typed_stitch():
    st = make_stitch(meta=False)
    duck = SimpleNamespace(P_up=st.P_up.detach(), b_up=st.b_up.detach(), P_down=st.P_down.detach(),
                           b_down=st.b_down.detach())
    sae_b = make_sae("topk", True, d_in=DB)
    new = transfer_sae(sae_b, duck, direction="down", target_model="model-a")
    h = torch.randn(64, DA)
    ref = st.down(sae_b(st.up(h)))
    assert torch.allclose(new(h), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert new.cfg.d_in == DA and new.cfg.metadata.model_name == "model-a"


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard"])
def test_saved_transferred_sae_loads_with_saelens(tmp_path, arch):
    sae = make_sae(arch, True, rescale=arch == "topk")
    st = make_stitch()
    new = transfer_sae(sae, st)
    folder = save_sae(new, tmp_path / "sae_b", sidecar={"stitch": "stitch.safetensors", "source_sae": "sae_a"})
    assert (folder / "cfg.json").exists() and (folder / "sae_weights.safetensors").exists()
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["d_in"] == DB and cfg["architecture"] == arch
    assert cfg["metadata"]["model_name"] == "model-b"
    assert cfg["metadata"]["hook_name"] == "blocks.5.hook_resid_pre"
    loaded = SAE.load_from_disk(folder)
    h = torch.randn(50, DB)
    assert torch.allclose(loaded(h), new(h), atol=1e-5)
    side = read_sidecar(folder)
    assert side["source_sae"] == "sae_a" and side["versions"]["sae-lens"]
    assert torch.allclose(load_sae(str(folder))(h), new(h), atol=1e-5)


def _one_line(exc: Exception) -> bool:
    return "\n" not in str(exc) and len(str(exc)) > 10


def test_width_mismatch_refused():
    sae = make_sae("topk", True, d_in=DA + 1)
    with pytest.raises(StageError) as err:
        transfer_sae(sae, make_stitch())
    assert "d_in=13" in str(err.value) and _one_line(err.value)


def test_stitch_for_other_models_or_layers_refused():
    st = make_stitch()
    sae = make_sae("topk", True)
    sae.cfg.metadata.model_name = "other-model"
    with pytest.raises(StageError) as err:
        check_compatible(sae, st)
    assert "other-model" in str(err.value) and _one_line(err.value)
    transfer_sae(sae, st, check_model=False)  # explicit override works
    sae.cfg.metadata.model_name = "model-a"
    sae.cfg.metadata.hook_name = "blocks.4.hook_resid_pre"
    with pytest.raises(StageError, match="layer 4"):
        transfer_sae(sae, st)
    sae.cfg.metadata.hook_name = "blocks.3.hook_mlp_out"
    with pytest.raises(StageError, match="hook_mlp_out"):
        transfer_sae(sae, st)


def test_unsupported_normalisation_and_direction_refused():
    sae = make_sae("standard", True)
    sae.cfg.normalize_activations = "layer_norm"
    with pytest.raises(StageError, match="normalize_activations"):
        transfer_sae(sae, make_stitch())
    with pytest.raises(StageError, match="direction"):
        transfer_sae(make_sae("topk", True), make_stitch(), direction="sideways")


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_random_baseline_same_shape(arch):
    new = transfer_sae(make_sae(arch, True), make_stitch())
    mean = torch.randn(DB)
    r1 = random_sae_like(new, b_dec=mean, seed=3)
    r2 = random_sae_like(new, b_dec=mean, seed=3)
    r3 = random_sae_like(new, b_dec=mean, seed=4)
    assert type(r1) is type(new) and r1.W_dec.shape == new.W_dec.shape
    assert torch.equal(r1.W_dec, r2.W_dec) and not torch.equal(r1.W_dec, r3.W_dec)
    assert torch.allclose(r1.W_dec.norm(dim=-1), new.W_dec.norm(dim=-1), rtol=1e-4)
    assert torch.allclose(r1.b_dec, mean)
    h = torch.randn(100, DB)
    if arch == "topk":
        assert ((r1.encode(h) != 0).sum(-1) <= new.cfg.k).all()
        # latent i reads <x - b_dec, u_i> with u_i the unit decoder direction, and writes it back along u_i
        u = r1.W_dec / r1.W_dec.norm(dim=-1, keepdim=True)
        codes = r1.encode(h)
        proj = (h - mean) @ u.T
        on = codes != 0
        assert on.any() and torch.allclose(codes[on], proj[on], atol=1e-4)
        assert torch.allclose(r1(h), codes @ u + mean, atol=1e-4)


def test_bad_sources_give_one_line_errors(tmp_path):
    with pytest.raises(StageError) as err:
        load_sae(str(tmp_path / "missing"))
    assert _one_line(err.value)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "cfg.json").write_text("{}")
    with pytest.raises(StageError, match="sae_weights"):
        load_sae(str(tmp_path / "half"))
    with pytest.raises(StitchplugError) as err:
        load_sae("release:no-such-release-xyz/blocks.0.hook_resid_pre")
    assert _one_line(err.value)
