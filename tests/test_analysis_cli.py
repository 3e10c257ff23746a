"""`stitchplug analyze` on a tiny run folder: every part lands in report.md and metrics.json."""

from __future__ import annotations

import json
import pytest

TINY = ["--cache-tokens", "3000", "--cache-context-size", "64", "--stitch-svcca-tokens", "500",
        "--sae-width", "64", "--sae-k", "4", "--sae-train-tokens", "4000", "--sae-batch-size", "256",
        "--eval-docs", "4", "--eval-max-windows", "4", "--no-progress"]


def stitchplug(*args) -> int:
    """Run the CLI in this process (a fresh interpreter costs ~30 s of imports on a busy machine)."""
    from stitchplug.cli import main

    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    assert stitchplug("run", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3",
                      "--output-dir", str(out), *TINY) == 0
    assert stitchplug("analyze", "--run", str(out), "--budget", "smoke", "--no-progress") == 0
    return out


def test_every_part_lands_in_report_and_metrics(analysed):
    m = json.loads((analysed / "metrics.json").read_text())
    fa = m["feature_analysis"]
    assert {"transferability", "semantic", "entropy", "attention"} <= set(fa)
    t = fa["transferability"]
    assert t["n_live"] + t["n_dead"] == 64 and 0 < t["usable_share"] < 1  # cross-tokenizer pair
    assert "sae" in m and "stitch" in m  # the run's own sections are kept
    report = (analysed / "report.md").read_text()
    for title in ("Transferability per latent", "Semantic vs structural", "Entropy features",
                  "Attention-deactivation features", "paper Table 2"):
        assert title in report, title
    for plot in ("analysis_transferability.png", "analysis_null_share.png"):
        assert (analysed / plot).stat().st_size > 1000


def test_rerun_of_one_part_keeps_the_others_and_one_section(analysed):
    assert stitchplug("analyze", "--run", str(analysed), "--what", "entropy", "--budget", "smoke",
                      "--no-progress") == 0
    fa = json.loads((analysed / "metrics.json").read_text())["feature_analysis"]
    assert {"transferability", "semantic", "entropy", "attention"} <= set(fa)
    report = (analysed / "report.md").read_text()
    assert report.count("## Feature analysis") == 1 and "Attention-deactivation features" in report


def test_bad_input_is_one_line(analysed, tmp_path, capsys):
    for args, msg in ((["--run", str(analysed), "--what", "entropy,vibes"], "unknown analysis part(s) 'vibes'"),
                      (["--run", str(tmp_path / "nope")], "does not exist"),
                      (["--run", str(tmp_path)], "not a stitchplug run folder")):
        capsys.readouterr()
        assert stitchplug("analyze", *args) != 0
        err = capsys.readouterr().err
        lines = [l for l in err.splitlines() if l.startswith("Error")]
        assert len(lines) == 1 and msg in lines[0], err
        assert "Traceback" not in err


def test_a_later_probe_run_in_the_folder_keeps_it_analysable(analysed, tmp_path):
    """config.yaml names the last run's artifact; the SAEs that analysis needs are still there."""
    import shutil

    from stitchplug.errors import StageError
    from stitchplug_analysis.runner import RunInputs

    folder = tmp_path / "probe_after_sae"
    shutil.copytree(analysed, folder)
    cfg = folder / "config.yaml"
    cfg.write_text(cfg.read_text().replace("artifact: sae", "artifact: probe", 1))
    assert "artifact: probe" in cfg.read_text()
    inputs = RunInputs(folder)
    assert inputs.sae("source").cfg.d_sae == 64
    shutil.rmtree(folder / "artifacts" / "sae" / "transferred")
    with pytest.raises(StageError, match="--artifact sae"):
        RunInputs(folder)
