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
              "artifacts/sae/source/cfg.json", "artifacts/sae/source/sae_weights.safetensors",
              "artifacts/sae/transferred/cfg.json", "artifacts/sae/random/cfg.json", "svcca_profile.png",
              "latent_frequency.png", "report/run.md", "report/sae.md"):
        assert (out / f).exists(), f
    m = json.loads((out / "metrics.json").read_text())
    ev = m["sae"]
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
    cfg = json.loads((out / "artifacts" / "sae" / "transferred" / "cfg.json").read_text())
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
    sae = SAE.load_from_disk(str(out / "artifacts" / "sae" / "transferred"))
    assert sae.cfg.d_in == 40 and sae.cfg.d_sae == 64


def test_rerun_reuses_finished_stages(tiny_run):
    out, _ = tiny_run
    before = (out / "stages" / "stitch.json").read_text()
    res = stitchplug("run", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3",
                     "--output-dir", str(out), *TINY)
    assert res.returncode == 0, res.stderr[-2000:]
    for stage in ("cache", "stitch", "stitch_ce", "sae.source", "sae.transfer", "sae.baseline", "sae.evaluate"):
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


def test_a_deleted_stage_output_is_rebuilt(tiny_run, tmp_path):
    out, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "stitch" / "stitch.safetensors").unlink()
    res = stitchplug("run", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3",
                     "--output-dir", str(copy), *TINY)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "[stitch] stale: its output stitch" in res.stderr and "is missing" in res.stderr
    assert (copy / "stitch" / "stitch.safetensors").read_bytes() == (out / "stitch" / "stitch.safetensors").read_bytes()


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
                     "--sae-source", str(out / "artifacts" / "sae" / "transferred"))  # a 40-wide SAE for a 32-wide model
    assert res.returncode != 0 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("Error:") and "width" in last


def test_wrong_flag_type_is_refused_by_click_naming_the_flag(tmp_path):
    for flag, value, expect in (("--cache-tokens", "many", "is not an integer"),
                                ("--stitch-solver", "magic", "is not one of 'lstsq', 'adam', 'lstsq+adam'"),
                                ("--sae-width", "wide", "is not an integer"),
                                ("--cache-source-layers", "1,x", "comma-separated list of ints")):
        res = stitchplug("run", "--output-dir", str(tmp_path / "x"), flag, value)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert f"Invalid value for '{flag}'" in res.stderr and expect in res.stderr, res.stderr
    assert not (tmp_path / "x").exists()


def test_range_errors_are_one_line_per_field(tmp_path):
    res = stitchplug("run", "--output-dir", str(tmp_path / "x"), "--cache-tokens", "0", "--eval-docs", "-1")
    assert res.returncode == 2
    errs = [l for l in res.stderr.strip().splitlines() if l.startswith("Error:")]
    assert len(errs) == 2 and any("cache.tokens" in e for e in errs) and any("eval.docs" in e for e in errs)


def test_help_shows_types_choices_and_kind_sections():
    res = stitchplug("run", "--help")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "--stitch-solver [lstsq|adam|lstsq+adam]" in text
    assert "--cache-tokens INTEGER" in text and "--stitch-alpha FLOAT" in text
    assert "--cache-source-layers INTS|none" in text and "--stitch-target-layer INTEGER|auto" in text
    assert "--sae-width INTEGER" in text and "[config: sae.width" in text  # the SAE kind's own section


def test_config_snapshot_has_the_kind_section(tiny_run):
    import yaml

    out, _ = tiny_run
    snap = yaml.safe_load((out / "config.yaml").read_text())
    assert snap["artifact"] == "sae" and snap["sae"]["width"] == 64 and snap["sae"]["k"] == 4


def test_layers_and_stitch_eval_default_to_the_run_folder(tiny_run):
    """`stitchplug layers` and `stitchplug stitch eval` read RUN/cache.h5 and RUN/stitch/ without --cache."""
    out, _ = tiny_run
    full = out.parent / "full_run_config.yaml"  # one config file serves run, layers and stitch (its sae: is ignored)
    full.write_text("sae:\n  width: 64\nstitch:\n  svcca_tokens: 500\n")
    res = stitchplug("layers", "--output-dir", str(out), "--config", str(full), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    prof = json.loads(res.stdout.strip().splitlines()[-1])
    assert prof["best_target_layer"] == json.loads((out / "metrics.json").read_text())["stitch"]["meta"]["target_layer"]
    res = stitchplug("stitch", "eval", "--output-dir", str(out), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    ev = json.loads(res.stdout.strip().splitlines()[-1])
    recon = json.loads((out / "metrics.json").read_text())["stitch"]["recon"]
    assert ev["recon"]["up"]["fvu"] == pytest.approx(recon["up"]["fvu"], rel=1e-5)


def test_rerun_keeps_what_other_commands_added(tiny_run, tmp_path):
    from stitchplug.api import RunFolder

    out, _ = tiny_run
    copy = tmp_path / "copy3"
    shutil.copytree(out, copy)
    rf = RunFolder(copy)
    rf.add_metrics("init_experiment", {"savings": [0.3]})
    rf.add_report_section("init_experiment", "## Transferred SAE as initialisation\n\nsavings +30%")
    report = (copy / "report.md").read_text()
    assert report.index("paper Table 2") < report.index("savings +30%") < report.index("Stage wall time")
    res = stitchplug("run", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3",
                     "--output-dir", str(copy), *TINY)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((copy / "metrics.json").read_text())["init_experiment"] == {"savings": [0.3]}
    report = (copy / "report.md").read_text()
    assert report.count("savings +30%") == 1 and report.index("paper Table 2") < report.index("savings +30%")


# -- a run folder is a transaction log (issue 13) -------------------------------------------------

def checksums(folder: Path) -> dict:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def copy_of(tiny_run, tmp_path, name):
    out, _ = tiny_run
    shutil.copytree(out, tmp_path / name)
    return tmp_path / name


def run_tiny(folder, *extra):
    return stitchplug("run", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3",
                      "--output-dir", str(folder), *TINY, *extra)


def test_refused_rerun_changes_nothing_and_its_advice_leaves_a_consistent_folder(tiny_run, tmp_path):
    from stitchplug.fingerprints import content_fingerprint

    run = copy_of(tiny_run, tmp_path, "advice")
    before = checksums(run)
    res = run_tiny(run, "--stitch-solver", "adam")
    lines = [l for l in res.stderr.strip().splitlines() if l.startswith("Error:")]
    assert res.returncode == 1 and len(lines) == 1 and "Traceback" not in res.stderr
    assert checksums(run) == before  # config.yaml included: nothing is written before the refusal
    named = [w for w in lines[0].split() if w.startswith("stages/")]
    assert {"stages/stitch.json", "stages/stitch_ce.json", "stages/sae.evaluate.json"} <= set(named)
    assert "stages/cache.json" not in named
    for marker in named:
        (run / marker).unlink()
    res = run_tiny(run, "--stitch-solver", "adam")
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stitch"]["fit"]["solver"] == "adam" and metrics["config"]["stitch"]["solver"] == "adam"
    stitch_fp = content_fingerprint(run / "stitch" / "stitch.safetensors")
    for stage in ("sae.transfer", "sae.evaluate", "stitch_ce"):
        assert json.loads((run / "stages" / f"{stage}.json").read_text())["inputs"]["stitch"] == stitch_fp


def test_stitch_train_refuses_to_replace_a_run_folders_stitch(tiny_run, tmp_path):
    run = copy_of(tiny_run, tmp_path, "train")
    before = checksums(run)
    res = stitchplug("stitch", "train", "--output-dir", str(run), "--stitch-solver", "adam")
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert res.returncode == 1 and len(lines) == 1 and "does not replace it" in lines[0]
    assert checksums(run) == before


def test_a_stitch_replaced_by_hand_is_refused_then_its_advice_refits_it_and_its_consumers(tiny_run, tmp_path):
    from stitchplug.fingerprints import content_fingerprint

    run = copy_of(tiny_run, tmp_path, "replaced")
    other = tmp_path / "adam" / "stitch.safetensors"
    res = stitchplug("stitch", "train", "--output-dir", str(run), "--out", str(other), "--stitch-solver", "adam",
                     "--max-steps", "3", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    shutil.copy(other, run / "stitch" / "stitch.safetensors")  # what `stitch train` used to do
    before = checksums(run)
    res = run_tiny(run)
    lines = [l for l in res.stderr.strip().splitlines() if l.startswith("Error:")]
    assert res.returncode == 1 and len(lines) == 1 and "was replaced after stage 'stitch'" in lines[0]
    assert checksums(run) == before  # the replaced file is kept, nothing is reused on top of it
    (run / "stages" / "stitch.json").unlink()  # the advice
    res = run_tiny(run)
    assert res.returncode == 0, res.stderr[-2000:]
    stitch = run / "stitch" / "stitch.safetensors"
    fp = content_fingerprint(stitch)
    assert fp != content_fingerprint(other)  # the lstsq stitch is back
    assert json.loads((run / "stages" / "stitch.json").read_text())["outputs"]["stitch"] == fp
    for stage in ("sae.transfer", "sae.evaluate", "stitch_ce"):
        assert json.loads((run / "stages" / f"{stage}.json").read_text())["inputs"]["stitch"] == fp


def test_a_second_writer_is_refused_in_one_line(tiny_run, tmp_path):
    from stitchplug.api import RunFolder

    run = copy_of(tiny_run, tmp_path, "locked")
    before = checksums(run)
    with RunFolder(run).writing("a test holding the lock"):
        res = run_tiny(run)
    lines = [l for l in res.stderr.strip().splitlines() if l.startswith("Error:")]
    assert res.returncode == 1 and len(lines) == 1 and "in use by a test holding the lock" in lines[0]
    assert checksums(run) == before


def test_list_of_choices_flag_parses_and_names_a_bad_item(tmp_path):
    """list[Literal] fields (steering.arms, steering.directions) took a bare TypeError before."""
    import typing

    import click

    from stitchplug.cli import FieldType

    ft = FieldType(list[typing.Literal["none", "native", "transferred", "random"]])
    assert ft.convert("native, transferred,random", None, None) == ["native", "transferred", "random"]
    with pytest.raises(click.BadParameter, match="'bogus' in 'native,bogus' is not one of 'none'"):
        ft.convert("native,bogus", None, None)
    res = stitchplug("run", "--artifact", "steering", "--output-dir", str(tmp_path / "x"),
                     "--steering-arms", "native,bogus")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "'bogus'" in res.stderr, res.stderr
    assert not (tmp_path / "x").exists()
