"""`stitchplug run --artifact steering` end to end on tiny models, through the artifact seam."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

CFG = {
    "artifact": "steering",
    "models": {"source": "tiny-llama-a", "target": "tiny-gemma3"},
    "cache": {"tokens": 3000, "context_size": 64},
    "stitch": {"svcca_tokens": 500},
    "eval": {"docs": 4, "max_windows": 4},
    "steering": {"languages": ["fr"], "vector_docs": 3, "vector_tokens": 16, "n_prompts": 2,
                 "max_new_tokens": 2, "agreement_detector": "none", "examples": 1},
}


def stitchplug(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "stitchplug.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def steering_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("steer")
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    out = root / "run"
    res = stitchplug("run", "--config", str(cfg), "--output-dir", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res, cfg


def test_every_arm_is_evaluated_and_reported(steering_run):
    out, res, _ = steering_run
    m = json.loads((out / "metrics.json").read_text())
    ev = m["steering"]
    assert set(ev) >= {"source_on_A", "transferred_on_B", "random_on_B", "native_on_B", "transferred_down_on_A",
                       "random_on_A", "none_on_A", "none_on_B"}
    labels = {k for label, arm in ev.items() if label != "aggregate" for k in arm["steering_language"]["arms"]}
    # the step across arms ran in the evaluate stage; the report renders it
    from stitchplug_steering.evaluate import transfer_gaps
    from stitchplug_steering.report import merge_pipeline_results

    gaps = ev["aggregate"]["gaps"]
    assert set(gaps) == {"B/fr/transferred-up", "A/fr/transferred-down"}
    assert all(g is None or 0.0 <= g <= 1.0 for g in gaps.values())
    without = {k: v for k, v in ev.items() if k != "aggregate"}
    assert gaps == transfer_gaps(merge_pipeline_results(without)["arms"]) == merge_pipeline_results(ev)["gaps"]
    assert labels == {"A/none", "B/none", "A/fr/native", "B/fr/native", "B/fr/transferred-up",
                      "A/fr/transferred-down", "A/fr/random", "B/fr/random"}
    rnd = ev["random_on_B"]["steering_language"]["arms"]["B/fr/random"]["info"]
    tr = ev["transferred_on_B"]["steering_language"]["arms"]["B/fr/transferred-up"]["info"]
    assert rnd["z"] == pytest.approx(tr["z"])  # the random vector is clamped at the transferred z
    report = (out / "report.md").read_text()
    assert "Steering-vector transfer" in report and "B/fr/transferred-up" in report and "Example generations" in report
    assert "B/fr/transferred-up: target-language share" in res.stdout
    gens = list((out / "artifacts" / "steering" / "generations").glob("*.jsonl"))
    assert len(gens) == 8


def test_steer_command_on_the_run(steering_run):
    out, _, _ = steering_run
    res = stitchplug("steer", "--run", str(out), "--model", "B", "--prompt", "The river", "--max-new-tokens", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "tiny-gemma3: unsteered" in res.stdout and "transferred-up" in res.stdout


def test_rerun_reuses_stages(steering_run):
    out, _, cfg = steering_run
    res = stitchplug("run", "--config", str(cfg), "--output-dir", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "[steering.evaluate] reused" in res.stderr
