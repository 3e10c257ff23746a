"""The README demo (`stitchplug run --preset quick`) on the real default pair, SmolLM2-135M -> Gemma-3-270M."""

from __future__ import annotations

import json
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(quick_sae_run):
    return quick_sae_run, json.loads((quick_sae_run / "metrics.json").read_text())


def test_quick_preset_layers_and_alignment(quick_run):
    _, m = quick_run
    assert m["cache"]["alignment_rate"]["source"] > 0.9 and m["cache"]["alignment_rate"]["target"] > 0.9
    meta = m["stitch"]["meta"]
    assert meta["source_layer"] == 15
    # z-scored SVCCA puts the best Gemma layer in the middle third, not at the embedding end
    assert 5 <= meta["target_layer"] <= 12, m["stitch"]["svcca"]["profile"]


def test_quick_preset_stitched_loss_is_between_clean_and_broken(quick_run):
    _, m = quick_run
    ce = m["stitched_ce"]
    assert 2.0 < ce["ce_a"] < 4.0 and 2.0 < ce["ce_b"] < 4.0
    # stitching costs something but keeps the models far from a unigram-level loss
    for key in ("a_to_b", "b_to_a", "a_to_b_to_a", "b_to_a_to_b"):
        assert ce[key] > min(ce["ce_a"], ce["ce_b"]) and ce[key] < 6.0, (key, ce)


def test_quick_preset_transferred_sae_beats_random_and_trails_source(quick_run):
    _, m = quick_run
    ev = m["sae"]
    src, tgt, rnd = ev["source_on_A"], ev["transferred_on_B"], ev["random_on_B"]
    for e in (src, tgt, rnd):
        assert abs(e["reconstruction"]["l0"] - 32) < 1e-6  # TopK k is unchanged by Eq. 6
    # transferred beats random on B, on every reconstruction and loss measure
    assert tgt["reconstruction"]["fvu"] < rnd["reconstruction"]["fvu"]
    assert tgt["reconstruction"]["fvu_excl_massive"] < rnd["reconstruction"]["fvu_excl_massive"]
    assert tgt["delta_loss"]["delta_loss"] < rnd["delta_loss"]["delta_loss"]
    assert tgt["ce_recovered"]["ce_loss_score"] > rnd["ce_recovered"]["ce_loss_score"]
    # and, as in the paper, it costs more next-token loss on B than the source SAE does on A
    assert tgt["delta_loss"]["delta_loss"] > src["delta_loss"]["delta_loss"]


def test_quick_preset_report_and_plots(quick_run):
    out, _ = quick_run
    report = (out / "report.md").read_text()
    assert "smollm2-135m.15 -> gemma-3-270m." in report and "(paper)" in report
    for png in ("svcca_profile.png", "latent_frequency.png", "latent_frequency_scatter.png"):
        assert (out / png).stat().st_size > 1000
