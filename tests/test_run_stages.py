"""Run-folder stages: reuse on re-run, refusal on changed config, redo after interruption."""

import json

import pytest

from stitchplug.errors import StageError
from stitchplug.runfolder import RunFolder


def test_finished_stage_is_reused(tmp_path):
    calls = []
    rf = RunFolder(tmp_path)
    assert rf.run("cache", {"tokens": 10}, lambda: calls.append(1) or {"n": 10}, log=lambda s: None) == {"n": 10}
    assert RunFolder(tmp_path).run("cache", {"tokens": 10}, lambda: calls.append(2) or {"n": 0}, log=lambda s: None) == {"n": 10}
    assert calls == [1]


def test_changed_config_is_refused_naming_the_field(tmp_path):
    rf = RunFolder(tmp_path)
    rf.run("stitch", {"stitch": {"solver": "lstsq"}}, lambda: {}, log=lambda s: None)
    with pytest.raises(StageError, match=r"stitch\.solver \('lstsq' -> 'adam'\)"):
        rf.run("stitch", {"stitch": {"solver": "adam"}}, lambda: {}, log=lambda s: None)
    assert json.loads(rf.marker("stitch").read_text())["deps"] == {"stitch": {"solver": "lstsq"}}


def test_interrupted_stage_is_redone(tmp_path):
    rf = RunFolder(tmp_path)

    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rf.run("sae", {}, boom, log=lambda s: None)
    assert not rf.marker("sae").exists()
    assert rf.run("sae", {}, lambda: {"ok": True}, log=lambda s: None) == {"ok": True}


def test_missing_stage_file_is_a_one_line_error(tmp_path):
    rf = RunFolder(tmp_path)
    with pytest.raises(StageError, match="stitch.safetensors is missing"):
        rf.require("stitch", "stitch/stitch.safetensors")
