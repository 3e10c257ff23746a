"""`stitchplug run` end to end on tiny random-init models: folder contents, reuse, refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--cache-tokens", "3000", "--cache-context-size", "64", "--stitch-svcca-tokens", "500",
        "--sae-width", "64", "--sae-k", "4", "--sae-train-tokens", "4000", "--sae-batch-size", "256",
        "--eval-docs", "4", "--eval-max-windows", "4", "--no-progress"]


def stitchplug(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "stitchplug.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    res = stitchplug("run", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3",
                     "--output-dir", str(out), *TINY)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_run_folder_has_every_stage_output(tiny_run):
    out, res = tiny_run
    for f in ("config.yaml", "cache.h5", "stitch/stitch.safetensors", "metrics.json", "report.md",
              "artifact_source/cfg.json", "artifact_source/sae_weights.safetensors",
              "artifact_target/cfg.json", "artifact_random/cfg.json", "svcca_profile.png", "latent_frequency.png"):
        assert (out / f).exists(), f
    m = json.loads((out / "metrics.json").read_text())
    ev = m["evaluation"]
    assert set(ev) == {"source_on_A", "transferred_on_B", "random_on_B", "diagnostics"}
    # the diagnostics recompute the transferred SAE's FVU on the same held-out tokens
    diag = ev["diagnostics"]
    assert diag["transferred"]["fvu"] == pytest.approx(ev["transferred_on_B"]["reconstruction"]["fvu"], rel=1e-4)
    assert 0 <= diag["round_trip_only"]["fvu"] < 10 and 0 <= diag["sae_error_only"]["fvu"] < 10
    for label in ("source_on_A", "transferred_on_B", "random_on_B"):
        rec = ev[label]["reconstruction"]
        assert rec["l0"] <= 4 + 1e-6 and 0 <= rec["fvu"] < 10
        assert "delta_loss" in ev[label]["delta_loss"]
    # cross-tokenizer pair: alignment is by character offsets, so not every token is kept
    assert 0 < m["cache"]["alignment_rate"]["source"] <= 1
    assert m["stitch"]["meta"]["target_model"] == "tiny-gemma3"
    cfg = json.loads((out / "artifact_target" / "cfg.json").read_text())
    assert cfg["d_in"] == 40  # tiny-gemma3's width
    report = (out / "report.md").read_text()
    assert "paper Table 2" in report and "transferred SAE on B" in report and "(paper)" in report
    # layer-selective cache (issue 14): the SVCCA probe chose B's layer, only it was cached
    sel = m["cache"]["layer_selection"]
    assert m["cache"]["target_layers"] == [sel["target_layer"]] == [m["stitch"]["meta"]["target_layer"]]
    assert len(m["stitch"]["svcca"]["profile"]) == 3 and "SVCCA probe of" in report


def test_transferred_sae_loads_with_sae_lens(tiny_run):
    from sae_lens import SAE

    out, _ = tiny_run
    sae = SAE.load_from_disk(str(out / "artifact_target"))
    assert sae.cfg.d_in == 40 and sae.cfg.d_sae == 64


def test_rerun_reuses_finished_stages(tiny_run):
    out, _ = tiny_run
    before = (out / "stages" / "stitch.json").read_text()
    res = stitchplug("run", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3",
                     "--output-dir", str(out), *TINY)
    assert res.returncode == 0, res.stderr[-2000:]
    for stage in ("cache", "stitch", "stitch_ce", "source", "transfer", "baseline", "evaluate"):
        assert f"[{stage}] reused" in res.stderr
    assert (out / "stages" / "stitch.json").read_text() == before


def test_changed_config_is_refused_without_touching_results(tiny_run):
    out, _ = tiny_run
    before = (out / "metrics.json").read_bytes()
    res = stitchplug("run", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3",
                     "--output-dir", str(out), *TINY, "--stitch-solver", "adam")
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("Error:") and "stitch.solver" in lines[-1]
    assert "Traceback" not in res.stderr
    assert (out / "metrics.json").read_bytes() == before


def test_missing_stage_file_is_a_one_line_error(tiny_run, tmp_path):
    out, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "stitch" / "stitch.safetensors").unlink()
    res = stitchplug("run", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3",
                     "--output-dir", str(copy), *TINY)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "stitch.safetensors is missing" in res.stderr.strip().splitlines()[-1]


def test_foreign_stitch_is_refused(tiny_run, tmp_path):
    """A stitch file for other models dropped into the run folder is refused, not used."""
    from stitchplug.stitch.model import Stitch

    out, _ = tiny_run
    copy = tmp_path / "copy2"
    shutil.copytree(out, copy)
    meta = json.loads((out / "stitch" / "stitch.json").read_text()) if (out / "stitch" / "stitch.json").exists() else {}
    other = Stitch(32, 48)
    other.save(copy / "stitch" / "stitch.safetensors", {**meta, "target_model": "tiny-llama-b", "d_target": 48})
    res = stitchplug("run", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3",
                     "--output-dir", str(copy), *TINY)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("Error:")


def test_sae_of_wrong_width_is_refused(tiny_run, tmp_path):
    out, _ = tiny_run
    res = stitchplug("run", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3",
                     "--output-dir", str(tmp_path / "wrong"), *TINY,
                     "--sae-source", str(out / "artifact_target"))  # a 40-wide SAE for a 32-wide model
    assert res.returncode != 0 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("Error:") and "width" in last


def test_invalid_flag_value_exits_2_with_one_line_per_field(tmp_path):
    res = stitchplug("run", "--output-dir", str(tmp_path / "x"), "--cache-tokens", "many", "--stitch-solver", "magic")
    assert res.returncode == 2
    errs = [l for l in res.stderr.strip().splitlines() if l.startswith("Error:")]
    assert len(errs) == 2 and any("cache.tokens" in e for e in errs) and any("stitch.solver" in e for e in errs)


def test_rerun_keeps_what_experiment_commands_added(tiny_run, tmp_path):
    out, _ = tiny_run
    copy = tmp_path / "copy3"
    shutil.copytree(out, copy)
    m = json.loads((copy / "metrics.json").read_text())
    m["init_experiment"] = {"savings": [0.3]}
    (copy / "metrics.json").write_text(json.dumps(m))
    (copy / "init_experiment.md").write_text("## Transferred SAE as initialisation\n\nsavings +30%")
    res = stitchplug("run", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3",
                     "--output-dir", str(copy), *TINY)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((copy / "metrics.json").read_text())["init_experiment"] == {"savings": [0.3]}
    report = (copy / "report.md").read_text()
    assert "<!-- init_experiment -->" in report and "savings +30%" in report
