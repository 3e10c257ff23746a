"""`stitchplug browse` on a tiny analysed run: data agree with metrics.json and with a brute-force
pass, a SIGKILL mid-pass resumes without recomputing, the Neuronpedia export validates, bad input
is one line. The browser test is tests/test_browse_site.py."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BROWSE_ARGS

ROOT = Path(__file__).resolve().parents[1]


def _data(run: Path, name: str):
    return json.loads((run / "browse" / "data" / f"{name}.json").read_text())


def _records(run: Path) -> list[dict]:
    out = []
    for p in sorted((run / "browse" / "data" / "latents").glob("*.json")):
        out += json.loads(p.read_text())["latents"]
    return out


def test_index_agrees_with_metrics(browsed_run):
    m = json.loads((browsed_run / "metrics.json").read_text())
    rows = _data(browsed_run, "index")["rows"]
    assert [r["i"] for r in rows] == list(range(64))
    for side, arm in (("a", "source_on_A"), ("b", "transferred_on_B")):
        freq = m["sae"][arm]["latent_frequency"]["latent_frequency"]
        assert [r[f"freq_{side}"] for r in rows] == pytest.approx(freq, abs=1e-12), side
    t = m["feature_analysis"]["transferability"]
    assert [r["r"] for r in rows] == t["per_latent"]
    assert [r["r_random"] for r in rows] == t["per_latent_random"]
    assert [r["class"] for r in rows] == m["feature_analysis"]["semantic"]["classes"]
    listed = {int(f["latent"]) for f in m["feature_analysis"]["entropy"]["features"]}
    assert {r["i"] for r in rows if r["entropy"]} == listed
    live_in_metrics = {i for i, f in enumerate(m["sae"]["source_on_A"]["latent_frequency"]["latent_frequency"]) if f > 0}
    assert live_in_metrics <= {r["i"] for r in rows if r["live"]}
    # every live latent has contexts on A and B's reading of the same text, in each model's tokens
    recs = _records(browsed_run)
    docs = _data(browsed_run, "docs")
    for rec in recs:
        if rec["live"] and rec["a"]["fires_docs"]:
            assert rec["a"]["top"] and len(rec["b"]["on_a"]) == len(rec["a"]["top"])
            for c in rec["a"]["top"]:
                assert len(c["acts"]) <= len(docs["a"][c["doc"]]) - c["start"]


def test_streaming_pass_equals_a_brute_force_pass(browsed_run):
    """Top-k maxima per latent, firing counts and B's activations on A's contexts, recomputed with
    the whole [tokens, latents] matrix of each document."""
    from stitchplug_browse.inputs import RunInputs, windows
    from stitchplug_browse.stream import codes

    inp = RunInputs(browsed_run, log=lambda m: None)
    wins = windows(inp.heldout(BROWSE_ARGS["docs"]), inp.model("a"), inp.model("b"), inp.context_size)
    full = {}
    for side in ("a", "b"):
        model, sae = inp.model(side), inp.sae(side)
        full[side] = [codes(sae, model.capture((w.ids_a if side == "a" else w.ids_b)[None], [inp.layers[side]])
                            [inp.layers[side]][0].float(), w.special_a if side == "a" else w.special_b) for w in wins]
    recs = _records(browsed_run)
    k = BROWSE_ARGS["top_k"]
    for side in ("a", "b"):
        per_doc_max = torch.stack([f.max(0).values for f in full[side]])  # [docs, m]
        fires = sum((f > 0).sum(0) for f in full[side])
        for j, rec in enumerate(recs):
            want = sorted([v for v in per_doc_max[:, j].tolist() if v > 0], reverse=True)[:k]
            got = [c["max"] for c in rec[side]["top"]]
            assert got == pytest.approx(want, rel=2e-3), (side, j)
            assert rec[side]["fires_docs"] == int(fires[j])
            for c in rec[side]["top"]:  # the stored context is the latent's activations there
                ref = full[side][c["doc"]][c["start"]:c["start"] + len(c["acts"]), j]
                assert c["acts"] == pytest.approx(ref.tolist(), rel=2e-3, abs=1e-3)
    for rec in recs:
        for o in rec["b"]["on_a"]:
            if o:
                ref = full["b"][o["doc"]][o["start"]:o["start"] + len(o["acts"]), rec["i"]]
                assert o["acts"] == pytest.approx(ref.tolist(), rel=2e-3, abs=1e-3)


SLOW_CHILD = textwrap.dedent("""
    import sys, time
    import stitchplug_browse.stream as s
    fwd = s._forward
    def slow(*a, **k):
        time.sleep(1.0)
        return fwd(*a, **k)
    s._forward = slow
    from stitchplug.cli import main
    main(sys.argv[1:])
""")


def test_a_kill_mid_pass_resumes_without_recomputing(tiny_analysed_run, browsed_run, tmp_path):
    from stitchplug_browse.runner import browse

    run = tmp_path / "run"
    shutil.copytree(tiny_analysed_run, run)
    args = [x for k, v in BROWSE_ARGS.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), str(ROOT / "tests")])}
    child = subprocess.Popen([sys.executable, "-c", SLOW_CHILD, "browse", "--run", str(run), "--no-progress", *args],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    state = run / "browse" / "state" / "pass_a.pt"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and child.poll() is None:
            if state.exists():
                saved = torch.load(state, weights_only=False)
                if not saved["done"] and saved["state"]["next_doc"] >= 8:
                    break
            time.sleep(0.05)
        assert child.poll() is None, child.stdout.read().decode()[-2000:]
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    done_before = torch.load(state, weights_only=False)["state"]["next_doc"]
    assert not (run / "browse" / "data" / "index.json").exists()
    logs = []
    s = browse(run, log=logs.append, progress=False, **BROWSE_ARGS)
    assert f"pass A: resuming at document {done_before} of {s['n_docs']}" in logs
    assert s["computed_docs"] == {"a": s["n_docs"] - done_before, "b": s["n_docs"]}
    # the result is the uninterrupted run's, byte for byte
    for name in ("index", "docs", "latents/0000"):
        got, want = _data(run, name), _data(browsed_run, name)
        if name == "index":
            got["meta"].pop("run"), want["meta"].pop("run")
        assert got == want, name
    again = browse(run, log=logs.append, progress=False, **BROWSE_ARGS)
    assert again["computed_docs"] == {"a": 0, "b": 0}


def _schemas():
    """Pydantic models of the Neuronpedia bulk-import rows, written from the dataclasses of SAEDashboard's
    neuronpedia_export (Activation, Feature, Model, Source, SourceRelease, SourceSet): every field with
    its type (datetimes as ISO strings, as orjson writes them), and no others."""
    from typing import List, Optional

    from pydantic import BaseModel, ConfigDict

    class Row(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

    class Activation(Row):
        id: str
        tokens: List[str]
        index: str
        layer: str
        modelId: str
        maxValue: float
        maxValueTokenIndex: int
        minValue: float
        values: List[float]
        creatorId: str
        dataSource: Optional[str]
        dataIndex: Optional[str]
        dfaValues: List[float]
        dfaTargetIndex: Optional[int]
        dfaMaxValue: Optional[float]
        createdAt: str
        lossValues: List[float]
        logitContributions: Optional[str]
        binMin: Optional[float]
        binMax: Optional[float]
        binContains: Optional[float]
        qualifyingTokenIndex: Optional[int]
        zIndices: Optional[List[List[int]]]
        zValues: Optional[List[float]]

    class Feature(Row):
        modelId: str
        layer: str
        index: str
        creatorId: Optional[str]
        createdAt: str
        maxActApprox: Optional[float]
        hasVector: bool
        vector: List[float]
        vectorLabel: Optional[str]
        vectorDefaultSteerStrength: Optional[float]
        hookName: Optional[str]
        topkCosSimIndices: List[int]
        topkCosSimValues: List[float]
        neuron_alignment_indices: List[int]
        neuron_alignment_values: List[float]
        neuron_alignment_l1: List[float]
        correlated_neurons_indices: List[int]
        correlated_neurons_pearson: List[float]
        correlated_neurons_l1: List[float]
        correlated_features_indices: List[int]
        correlated_features_pearson: List[float]
        correlated_features_l1: List[float]
        neg_str: List[str]
        neg_values: List[float]
        pos_str: List[str]
        pos_values: List[float]
        frac_nonzero: float
        freq_hist_data_bar_heights: List[float]
        freq_hist_data_bar_values: List[float]
        logits_hist_data_bar_heights: List[float]
        logits_hist_data_bar_values: List[float]
        decoder_weights_dist: List[float]
        sourceSetName: Optional[str]

    class Model(Row):
        id: str
        instruct: bool
        creatorId: str
        displayNameShort: str
        displayName: str
        tlensId: Optional[str]
        dimension: Optional[int]
        visibility: str
        defaultSourceSetName: Optional[str]
        defaultSourceId: Optional[str]
        inferenceEnabled: bool
        layers: int
        neuronsPerLayer: int
        createdAt: str
        owner: str
        updatedAt: str
        website: Optional[str]

    class Source(Row):
        id: str
        modelId: str
        setName: str
        creatorId: str
        hasDashboards: bool
        inferenceEnabled: bool
        inferenceHosts: List[str]
        saelensConfig: Optional[str]
        saelensRelease: Optional[str]
        saelensSaeId: Optional[str]
        hfRepoId: Optional[str]
        hfFolderId: Optional[str]
        visibility: str
        defaultOfModelId: Optional[str]
        hasUmap: bool
        hasUmapLogSparsity: bool
        hasUmapClusters: bool
        num_prompts: Optional[int]
        num_tokens_in_prompt: Optional[int]
        dataset: Optional[str]
        notes: Optional[str]
        createdAt: str

    class SourceRelease(Row):
        name: str
        description: str
        creatorName: str
        creatorId: str
        visibility: str
        isNewUi: bool
        featured: bool
        descriptionShort: Optional[str]
        urls: List[str]
        creatorEmail: Optional[str]
        creatorNameShort: Optional[str]
        defaultSourceSetName: Optional[str]
        defaultSourceId: Optional[str]
        defaultUmapSourceIds: List[str]
        createdAt: str

    class SourceSet(Row):
        modelId: str
        name: str
        creatorId: str
        hasDashboards: bool
        visibility: str
        description: str
        type: str
        creatorName: str
        urls: List[str]
        creatorEmail: Optional[str]
        releaseName: Optional[str]
        defaultOfModelId: Optional[str]
        defaultRange: int
        defaultShowBreaks: bool
        showDfa: bool
        showCorrelated: bool
        showHeadAttribution: bool
        showUmap: bool
        createdAt: str

    return {"release.jsonl": SourceRelease, "model.jsonl": Model, "sourceset.jsonl": SourceSet,
            "source.jsonl": Source, "features": Feature, "activations": Activation}


def _lines(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_neuronpedia_export_validates_against_the_documented_schema(browsed_run, tmp_path):
    from pydantic import ValidationError

    from stitchplug_browse.export import export

    schemas = _schemas()
    meta = _data(browsed_run, "index")["meta"]
    rows = _data(browsed_run, "index")["rows"]
    folders = export(browsed_run, tmp_path / "np", set_name="tiny")
    assert [f.relative_to(tmp_path / "np").as_posix() for f in folders] == [
        f"tiny-llama-a/{meta['layers']['a']}-tiny", f"tiny-gemma3/{meta['layers']['b']}-tiny-transferred"]
    live = sorted(r["i"] for r in rows if r["live"])
    for side, folder in zip(("a", "b"), folders):
        for name in ("release.jsonl", "model.jsonl", "sourceset.jsonl", "source.jsonl"):
            (row,) = _lines(folder / name)
            schemas[name].model_validate(row)
        feats = [f for p in sorted((folder / "features").glob("batch-*.jsonl.gz")) for f in _lines(p)]
        acts = [a for p in sorted((folder / "activations").glob("batch-*.jsonl.gz")) for a in _lines(p)]
        for f in feats:
            schemas["features"].model_validate(f)
        for a in acts:
            schemas["activations"].model_validate(a)
            assert len(a["tokens"]) == len(a["values"]) and a["maxValue"] == max(a["values"])
            assert a["values"][a["maxValueTokenIndex"]] == a["maxValue"]
        assert sorted(int(f["index"]) for f in feats) == live
        assert {f["layer"] for f in feats} == {folder.name} == {a["layer"] for a in acts}
        freq = {r["i"]: r[f"freq_{side}"] for r in rows}
        assert all(f["frac_nonzero"] == pytest.approx(freq[int(f["index"])]) for f in feats)
    bad = dict(_lines(folders[0] / "source.jsonl")[0], extra_field=1)
    with pytest.raises(ValidationError):
        schemas["source.jsonl"].model_validate(bad)


def test_vectors_have_top_tokens_on_both_models_and_generations(browsed_run):
    v = _data(browsed_run, "vectors")
    (probe,) = v["probes"]
    assert set(probe["dense"]) == {"a", "b"}
    for side in ("a", "b"):
        assert set(probe["dense"][side]) == {"a", "b"} and len(probe["dense"][side]["a"]["pos"]) == 8
    assert probe["sparse"]["2"] == [[3, 0.5], [7, -0.3]]
    (steer,) = v["steering"]
    assert steer["side"] == "a" and set(steer["tokens"]) == {"a", "b"}
    assert v["generations"]["native_on_A/fr"][0]["text"] == " est belle"


def test_bad_input_is_one_line(tiny_analysed_run, tmp_path, capsys):
    from conftest import _cli

    no_sae = tmp_path / "no_sae"
    shutil.copytree(tiny_analysed_run, no_sae)
    shutil.rmtree(no_sae / "artifacts" / "sae" / "transferred")
    for args, msg in ((["--run", str(tmp_path / "nope")], "does not exist"),
                      (["--run", str(no_sae)], "needs the SAEs of `stitchplug run --artifact sae`"),
                      (["--run", str(tiny_analysed_run), "--top-k", "0"], "top_k must be at least 1")):
        capsys.readouterr()
        assert _cli("browse", *args) != 0
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("Error")]
        assert len(lines) == 1 and msg in lines[0], err
        assert "Traceback" not in err
    assert not (tiny_analysed_run / "browse").exists()
