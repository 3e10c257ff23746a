"""bench/diff_metrics.py: numbers compared exactly, wall times and run-folder paths ignored."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("diff_metrics", ROOT / "bench" / "diff_metrics.py")
dm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dm)

BASE = {"config": {"output_dir": "/runs/base", "seed": 0}, "stage_seconds": {"cache": 12.0},
        "sae": {"source_on_A": {"reconstruction": {"fvu": 0.25, "l0": 32.0}},
                "diagnostics": {"timing": {"feature_seconds": 3.0}, "folder": "artifacts/sae/source"}},
        "probe": {"tasks": [{"accuracy": 0.8, "wall_s": 1.0}]}}


def test_identical_but_for_times_and_paths(tmp_path):
    new = json.loads(json.dumps(BASE))
    new["config"]["output_dir"] = "/runs/new"
    new["stage_seconds"]["cache"] = 99.0
    new["sae"]["diagnostics"]["timing"]["feature_seconds"] = 7.0
    new["probe"]["tasks"][0]["wall_s"] = 5.0
    lines, s = dm.diff(BASE, new)
    assert s["identical"] and s["compared"] == 4 and not lines
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(BASE))
    b.write_text(json.dumps(new))
    assert dm.main([str(a), str(b)]) == 0


def test_a_changed_number_or_key_is_reported(tmp_path):
    new = json.loads(json.dumps(BASE))
    new["sae"]["source_on_A"]["reconstruction"]["fvu"] = 0.2500001
    new["probe"]["tasks"].append({"accuracy": 0.5})
    lines, s = dm.diff(BASE, new)
    assert s == {"compared": 4, "differ": 1, "only_base": 0, "only_new": 1, "identical": False}
    assert any("sae.source_on_A.reconstruction.fvu" in line for line in lines)
    assert dm.diff(BASE, new, rtol=1e-5, sections=["sae"])[1]["identical"]
    assert dm.diff(BASE, new, rtol=1e-5, exclude=["probe"])[1]["identical"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(BASE))
    b.write_text(json.dumps(new))
    assert dm.main([str(a), str(b)]) == 1
