"""`stitchplug run --artifact probe` end to end on tiny models, in a folder that already holds a tiny
SAE run (its cache, stitch and SAEs are reused through ``requires = ("sae",)``; the native SAE on B
is trained as the SAE kind's ``sae.native`` stage)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

CORE = {"cache": {"tokens": 3000, "context_size": 64}, "stitch": {"svcca_tokens": 500},
        "eval": {"docs": 4, "max_windows": 4}}
MODELS = {"source": "tiny-llama-a", "target": "tiny-gemma3"}
SAE = {"width": 64, "k": 4, "train_tokens": 4000, "batch_size": 256}


def results(folder):
    """The probe kind's results: its step across arms and its diagnostics (saes, settings)."""
    m = json.loads((folder / "metrics.json").read_text())["probe"]
    return m["aggregate"] | m["diagnostics"]


def stitchplug(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "stitchplug.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _task_file(path):
    import numpy as np
    import pandas as pd
    from stitchplug_models.tiny import TRAIN_TEXT

    words = TRAIN_TEXT.split()
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for i in range(120):
        t = [w for w in rng.choice(words, size=rng.integers(5, 20)) if w != "river"]
        if i % 2:  # positives mention the river: a token-identity task a mean-pooled residual can read
            t.insert(int(rng.integers(0, len(t) + 1)), "river")
        texts.append(" ".join(t))
        labels.append(i % 2)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("probe")
    out = base / "run"
    sae_cfg = base / "sae.yaml"
    sae_cfg.write_text(yaml.safe_dump({"artifact": "sae", "output_dir": str(out), "models": MODELS, **CORE,
                                       "sae": SAE}))
    res = stitchplug("run", "--config", str(sae_cfg), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    task = _task_file(base / "river.csv")
    probe_cfg = base / "probe.yaml"
    probe_cfg.write_text(yaml.safe_dump({"artifact": "probe", "output_dir": str(out), "models": MODELS, **CORE, "sae": SAE,
                                         "probe": {"tasks": [f"file:{task}", "wiki-topic:Mathematics"],
                                                   "max_examples": 80, "ks": [1, 5, 20], "n_boot": 200}}))
    res = stitchplug("run", "--config", str(probe_cfg), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    return out, probe_cfg, res


def test_probe_run_outputs(probe_run):
    out, _, _ = probe_run
    for f in ("artifacts/probe/source/probes.json", "artifacts/probe/transferred/probes.json",
              "artifacts/sae/native/cfg.json", "artifacts/probe/retrained_on_B/probes.json",
              "artifacts/probe/shuffled_on_B/probes.json", "probe_transfer.png", "report.md", "metrics.json"):
        assert (out / f).exists(), f
    m = json.loads((out / "metrics.json").read_text())
    res = results(out)
    # one pipeline arm per probe set, each judged by the probe_accuracy evaluator
    arms = {k for k in m["probe"] if k not in ("aggregate", "diagnostics")}
    assert arms == {"source_on_A", "transferred_on_B", "retrained_on_B", "reselected_on_B", "residual_on_B",
                    "native_on_B", "random_on_B", "random_unit_on_B", "shuffled_on_B"}
    for arm in arms:
        assert set(m["probe"][arm]) == {"probe_accuracy"}, arm
    assert not (out / "artifacts/probe/results").exists()
    assert set(res["tasks"]) == {f"file:{out.parent / 'river.csv'}", "wiki-topic:Mathematics"}
    assert res["saes"]["source"].startswith("artifacts/sae/source")  # the SAE run's SAE was reused
    assert res["saes"]["native"] == "artifacts/sae/native" and "warning" not in res["saes"]
    assert m["config"]["sae"] == json.loads(json.dumps(m["config"]["sae"])) and m["config"]["sae"]["width"] == 64
    for arm in ("source_A", "transfer_noretrain", "transfer_retrain", "transfer_reselect", "native_B", "random_B"):
        assert set(res["sparse"][arm]) == {"1", "5", "20"}, arm
    for r in res["tasks"].values():
        assert r["n_test"] == 24 and 0 <= r["sparse"]["source_A"]["5"]["accuracy"] <= 1
    report = (out / "report.md").read_text()
    assert "Probe transfer" in report and "probe_transfer.png" in report and "wiki-topic:Mathematics" in report


def test_transferred_dense_probe_is_A_probe_through_T_down(probe_run):
    import numpy as np
    from stitchplug.api import Stitch

    out, _, _ = probe_run
    src = json.loads((out / "artifacts/probe/source/probes.json").read_text())
    tgt = json.loads((out / "artifacts/probe/transferred/probes.json").read_text())
    st = Stitch.load(out / "stitch" / "stitch.safetensors")
    hB = np.random.default_rng(0).normal(size=(5, st.d_target))
    for t in src["tasks"]:
        a, b = src["tasks"][t]["dense"], tgt["tasks"][t]["dense"]
        tdown = hB @ st.P_down.detach().double().numpy() + st.b_down.detach().double().numpy()
        np.testing.assert_allclose(hB @ np.array(b["coef"]) + b["intercept"],
                                   tdown @ np.array(a["coef"]) + a["intercept"], rtol=1e-8, atol=1e-8)
        assert src["tasks"][t]["sparse"] == tgt["tasks"][t]["sparse"]


def test_rerun_reuses_and_bad_task_is_one_line(probe_run, tmp_path):
    out, probe_cfg, _ = probe_run
    res = stitchplug("run", "--config", str(probe_cfg), "--no-progress")
    assert res.returncode == 0 and "probe task" not in res.stdout  # nothing recomputed
    cfg = yaml.safe_load(probe_cfg.read_text())
    cfg["output_dir"] = str(tmp_path / "other")
    cfg["probe"]["tasks"] = ["wiki-topic:Astrology"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    res = stitchplug("run", "--config", str(bad), "--no-progress")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "unknown wiki topic 'Astrology'" in res.stderr.strip().splitlines()[-1]


def test_probe_alone_trains_the_sae_stages_and_a_changed_sae_section_is_refused(probe_run, tmp_path):
    import shutil

    out, probe_cfg, _ = probe_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("probe*", "sae"))
    for marker in [*(copy / "stages").glob("probe.*"), *(copy / "stages").glob("sae.*")]:
        marker.unlink()
    cfg = yaml.safe_load(probe_cfg.read_text())
    cfg["output_dir"] = str(copy)
    cfg["probe"].update(tasks=cfg["probe"]["tasks"][:1])
    cfg["sae"] = {"width": 32, "k": 4, "train_tokens": 2048, "batch_size": 256}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = stitchplug("run", "--config", str(path), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    log = res.stdout + res.stderr  # stage lines go to stderr
    assert "[sae.source] done" in log and "[sae.native] done" in log
    r = results(copy)
    assert r["saes"]["source"] == "artifacts/sae/source" and "warning" not in r["saes"]
    native = json.loads((copy / "artifacts/sae/native/cfg.json").read_text())
    assert native["d_sae"] == 32  # the native SAE on B gets the source SAE's budget
    # the SAE stages belong to the sae section: a probe run with another one is refused, in one line
    cfg["sae"]["width"] = 48
    path.write_text(yaml.safe_dump(cfg))
    res = stitchplug("run", "--config", str(path), "--no-progress")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "sae.source" in res.stderr and "sae.width (32 -> 48)" in res.stderr


def test_sparse_arms_agree_with_the_plain_reference(probe_run):
    """Issue 25: every sparse arm of the run (selection, fit, score; SAEs read from the folder) within
    0.01 of the independent reference of tests/probe_reference.py, per task and k."""
    from probe_reference import reference_on_folder

    out, _, _ = probe_run
    res = results(out)
    assert res["settings"]["selection"] == "abs"
    ref = reference_on_folder(out)
    checked = 0
    for task, arms in ref.items():
        for arm, by_k in arms.items():
            for k, acc in by_k.items():
                got = res["tasks"][task]["sparse"][arm][k]["accuracy"]
                assert abs(got - acc) <= 0.01, (task, arm, k, got, acc)
                checked += 1
    assert checked == 2 * 8 * 3  # two tasks, eight sparse arms (the controls included), k = 1, 5, 20


def test_recovery_coverage_and_failures_recorded(probe_run):
    out, _, _ = probe_run
    res = results(out)
    for r in res["tasks"].values():
        cov = r["coverage"]
        assert 0 <= cov["stitch_down"]["fvu"] and cov["stitch_down"]["n_tokens"] > 0
        assert set(cov["sae"]) == {"source", "transferred", "native"}
        dense_b = r["dense"]["dense_B"]["accuracy"]
        rec = r["recovery"]["native_B"]["5"]
        if dense_b - 0.5 > 0.02:
            assert abs(rec - (r["sparse"]["native_B"]["5"]["accuracy"] - 0.5) / (dense_b - 0.5)) < 1e-12
    agg = res
    assert "transfer_retrain" in agg["recovery"] and isinstance(agg["failures"], list)
    for f in agg["failures"]:
        assert f["reason"] in ("stitch", "sae", "stitch+sae", "selection")


def test_stale_transferred_sae_is_replaced_by_eq6(probe_run, tmp_path):
    """A transferred SAE in the folder whose latents are not Eq. 6 of the source (here: permuted)
    would make A's latent indices read other latents on B; the run recomputes it."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    out, probe_cfg, _ = probe_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("probe*"))
    for marker in (copy / "stages").glob("probe.*"):
        marker.unlink()
    weights = copy / "artifacts/sae/transferred/sae_weights.safetensors"
    w = load_file(weights)
    perm = torch.randperm(w["W_enc"].shape[1], generator=torch.Generator().manual_seed(0))
    w["W_enc"], w["b_enc"], w["W_dec"] = w["W_enc"][:, perm].contiguous(), w["b_enc"][perm].contiguous(), w["W_dec"][perm].contiguous()
    save_file(w, weights)
    cfg = yaml.safe_load(probe_cfg.read_text())
    cfg["output_dir"] = str(copy)
    cfg["probe"]["tasks"] = cfg["probe"]["tasks"][:1]
    path = tmp_path / "stale.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = stitchplug("run", "--config", str(path), "--no-progress")
    # the transferred SAE is the sae kind's sae.transfer output: replaced behind its marker, the run
    # refuses in one line and says how to redo it (the probe's own same-function check,
    # transferred_stale, is the second line of defence for SAEs handed over otherwise)
    err = res.stderr.strip().splitlines()[-1]  # (after the preflight's model-loading lines)
    assert res.returncode != 0 and "Traceback" not in res.stderr and "sae.transfer" in err and "replaced" in err, err
    (copy / "stages" / "sae.transfer.json").unlink()
    res = stitchplug("run", "--config", str(path), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    r = results(copy)
    assert "[sae.transfer] done" in res.stdout + res.stderr and "transferred_stale" not in r["saes"]
    first = results(out)
    task = next(iter(r["tasks"]))
    for arm in ("transfer_noretrain", "transfer_retrain"):  # as with the consistent transferred SAE
        for k in ("1", "5", "20"):
            assert abs(r["tasks"][task]["sparse"][arm][k]["accuracy"]
                       - first["tasks"][task]["sparse"][arm][k]["accuracy"]) <= 1 / r["tasks"][task]["n_test"]


def test_an_edited_task_file_makes_the_probe_stages_stale(probe_run, tmp_path):
    """Reproduction (issue 28): after editing a task file's labels every stage was reused and the run
    still reported the old accuracy. The file's content is in the probe stages' fingerprints now."""
    import shutil

    out, probe_cfg, _ = probe_run
    cfg = yaml.safe_load(probe_cfg.read_text())
    task = next(t for t in cfg["probe"]["tasks"] if t.startswith("file:"))[len("file:"):]
    copy = tmp_path / "edited"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".lock"))
    cfg["output_dir"] = str(copy)
    edited_cfg = tmp_path / "probe.yaml"
    edited_cfg.write_text(yaml.safe_dump(cfg))
    original = open(task).read()
    try:
        import pandas as pd

        df = pd.read_csv(task)
        df["label"] = 1 - df["label"]  # every label flipped
        df.to_csv(task, index=False)
        res = stitchplug("run", "--config", str(edited_cfg), "--no-progress")
    finally:
        open(task, "w").write(original)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[probe.source] stale" in res.stderr and "changed since it finished" in res.stderr
    before, after = results(out), results(copy)
    assert after["tasks"] != before["tasks"]  # recomputed on the edited labels, not reused


def test_a_folder_of_the_earlier_probe_layout_is_refused_in_one_line(probe_run, tmp_path):
    """Probe stages finished before scoring became the probe_accuracy evaluator (layout 2) are not
    mixed with the new outputs: the run names the stages to delete, and after that it recomputes."""
    import shutil

    out, probe_cfg, _ = probe_run
    copy = tmp_path / "old"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".lock"))
    for marker in (copy / "stages").glob("probe.*.json"):
        rec = json.loads(marker.read_text())
        assert rec["deps"].pop("layout") == 2
        marker.write_text(json.dumps(rec))
    for marker in (copy / "stages").glob("sae.*.json"):
        assert "layout" not in json.loads(marker.read_text())["deps"]  # the sae kind never changed layout
    cfg = yaml.safe_load(probe_cfg.read_text())
    cfg["output_dir"] = str(copy)
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(cfg))
    before = (copy / "metrics.json").read_text()
    res = stitchplug("run", "--config", str(path), "--no-progress")
    err = res.stderr.strip().splitlines()[-1]
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "layout (None -> 2)" in err and "stages/probe.source.json" in err and "stages/probe.evaluate.json" in err, err
    assert (copy / "metrics.json").read_text() == before  # nothing written
