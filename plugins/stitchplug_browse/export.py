"""The Neuronpedia bulk-import layout of the browsed SAEs, from ``RUN/browse/data`` (no model needed).

Layout (as SAEDashboard's ``neuronpedia_export`` writes it for Neuronpedia's importer)::

    OUT/<model id>/<source id>/release.jsonl, model.jsonl, sourceset.jsonl, source.jsonl
    OUT/<model id>/<source id>/features/batch-<n>.jsonl.gz      one row per latent
    OUT/<model id>/<source id>/activations/batch-<n>.jsonl.gz   one row per top-activating context

``<source id>`` is ``<layer>-<set name>`` for the source SAE on A and ``<layer>-<set name>-transferred``
for the transferred SAE on B. Only live latents are exported; ``frac_nonzero`` is the firing frequency
on the cache's held-out split (on the browsed documents when the run has none), ``topkCosSim*`` the
decoder-cosine neighbours, ``pos_*``/``neg_*`` the top promoted and suppressed tokens, the frequency
histogram the browser's log-spaced activation histogram (bar values at the bins' geometric centres).
Fields the browser does not compute (neuron alignment, correlations, DFA, logit histograms) are empty.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from pathlib import Path

from ._core import RunFolder, StageError, resid_hook

BATCH = 128
"""Latents per features/activations batch file."""


def _load(data: Path, name: str):
    path = data / f"{name}.json"
    if not path.exists():
        raise StageError(f"{path} is missing: run `stitchplug browse --run {data.parent.parent}` first")
    return json.loads(path.read_text())


def _jsonl_gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=5) as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n")
    tmp.replace(path)


def _jsonl(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _cuid(*parts) -> str:
    """A deterministic 25-character id (Neuronpedia ids are cuids: 'c' + 24 characters)."""
    return "c" + hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:24]


def export(run: str | Path, out: str | Path | None = None, set_name: str = "stitchplug", creator: str = "stitchplug",
           creator_id: str = "stitchplug") -> list[Path]:
    """Write the layout for both SAEs; returns the two source folders."""
    rf = RunFolder.existing(run)
    data = rf.path("browse", "data")
    index = _load(data, "index")
    docs = _load(data, "docs")
    meta = index["meta"]
    out = Path(out) if out else rf.path("browse", "neuronpedia")
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    shards = {}
    for p in sorted((data / "latents").glob("*.json")):
        shards.update({r["i"]: r for r in json.loads(p.read_text())["latents"]})
    folders = []
    with rf.writing("stitchplug browse-export"):
        for side, suffix in (("a", ""), ("b", "-transferred")):
            model = str(meta["models"][side])
            layer = int(meta["layers"][side])
            source_id = f"{layer}-{set_name}{suffix}"
            folder = out / model / source_id
            hook = resid_hook(layer)
            _jsonl(folder / "release.jsonl", {
                "name": set_name, "description": f"stitchplug SAEs of {meta['run']}", "creatorName": creator,
                "creatorId": creator_id, "visibility": "PUBLIC", "isNewUi": False, "featured": False,
                "descriptionShort": "stitchplug SAEs", "urls": [], "creatorEmail": None, "creatorNameShort": creator,
                "defaultSourceSetName": None, "defaultSourceId": None, "defaultUmapSourceIds": [], "createdAt": now})
            _jsonl(folder / "model.jsonl", {
                "id": model, "instruct": model.endswith("-it"), "creatorId": creator_id, "displayNameShort": model,
                "displayName": model, "tlensId": None, "dimension": None, "visibility": "PUBLIC",
                "defaultSourceSetName": None, "defaultSourceId": None, "inferenceEnabled": False, "layers": 0,
                "neuronsPerLayer": 0, "createdAt": now, "owner": "", "updatedAt": now, "website": None})
            _jsonl(folder / "sourceset.jsonl", {
                "modelId": model, "name": f"{set_name}{suffix}", "creatorId": creator_id, "hasDashboards": True,
                "visibility": "PUBLIC", "description": ("transferred SAE (Eq. 6) on " if suffix else "source SAE on ")
                + f"{model} layer {layer}", "type": "", "creatorName": creator, "urls": [], "creatorEmail": None,
                "releaseName": set_name, "defaultOfModelId": None, "defaultRange": 1, "defaultShowBreaks": True,
                "showDfa": False, "showCorrelated": False, "showHeadAttribution": False, "showUmap": False,
                "createdAt": now})
            _jsonl(folder / "source.jsonl", {
                "id": source_id, "modelId": model, "setName": f"{set_name}{suffix}", "creatorId": creator_id,
                "hasDashboards": True, "inferenceEnabled": False, "inferenceHosts": [], "saelensConfig": None,
                "saelensRelease": None, "saelensSaeId": None, "hfRepoId": None, "hfFolderId": None,
                "visibility": "PUBLIC", "defaultOfModelId": None, "hasUmap": False, "hasUmapLogSparsity": False,
                "hasUmapClusters": False, "num_prompts": int(meta["n_docs"]), "num_tokens_in_prompt": None,
                "dataset": None, "notes": "exported by stitchplug browse-export", "createdAt": now})
            live = [r["i"] for r in index["rows"] if r["live"]]
            for b, start in enumerate(range(0, len(live), BATCH)):
                feats, acts = [], []
                for i in live[start:start + BATCH]:
                    f, a = _feature(shards[i], side, index["rows"][i], meta, docs[side], model, source_id, hook,
                                    creator_id, now)
                    feats.append(f)
                    acts.extend(a)
                _jsonl_gz(folder / "features" / f"batch-{b}.jsonl.gz", feats)
                _jsonl_gz(folder / "activations" / f"batch-{b}.jsonl.gz", acts)
            folders.append(folder)
    return folders


def _feature(rec: dict, side: str, row: dict, meta: dict, tokens: list, model: str, source_id: str, hook: str,
             creator_id: str, now: str) -> tuple[dict, list[dict]]:
    s = rec[side]
    i = rec["i"]
    freq = row.get(f"freq_{side}")
    edges = meta["hist_edges"]
    h = s["hist"]
    centres = [(edges[h["lo"] + n] * edges[h["lo"] + n + 1]) ** 0.5 for n in range(len(h["counts"]))]
    neigh = rec.get(f"neighbours_{side}") or []
    acts = []
    for n, c in enumerate(s["top"]):
        vals = [float(v) for v in c["acts"]]
        toks = tokens[c["doc"]][c["start"]:c["start"] + len(vals)]
        top = max(range(len(vals)), key=vals.__getitem__)
        acts.append({"id": _cuid(source_id, i, n), "tokens": toks, "index": str(i), "layer": source_id,
                     "modelId": model, "maxValue": vals[top], "maxValueTokenIndex": top, "minValue": min(vals),
                     "values": vals, "creatorId": creator_id, "dataSource": None, "dataIndex": str(c["doc"]),
                     "dfaValues": [], "dfaTargetIndex": None, "dfaMaxValue": None, "createdAt": now,
                     "lossValues": [], "logitContributions": None, "binMin": -1.0, "binMax": None,
                     "binContains": None, "qualifyingTokenIndex": top, "zIndices": None, "zValues": None})
    feat = {"modelId": model, "layer": source_id, "index": str(i), "creatorId": creator_id, "createdAt": now,
            "maxActApprox": float(s["max"] or 0.0), "hasVector": False, "vector": [], "vectorLabel": None,
            "vectorDefaultSteerStrength": 10, "hookName": hook,
            "topkCosSimIndices": [int(j) for j, _ in neigh], "topkCosSimValues": [float(v) for _, v in neigh],
            "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
            "correlated_neurons_indices": [], "correlated_neurons_pearson": [], "correlated_neurons_l1": [],
            "correlated_features_indices": [], "correlated_features_pearson": [], "correlated_features_l1": [],
            "neg_str": [t for t, _ in s["neg"]], "neg_values": [float(v) for _, v in s["neg"]],
            "pos_str": [t for t, _ in s["pos"]], "pos_values": [float(v) for _, v in s["pos"]],
            "frac_nonzero": float(freq if freq is not None else (s["freq_docs"] or 0.0)),
            "freq_hist_data_bar_heights": [float(x) for x in h["counts"]], "freq_hist_data_bar_values": centres,
            "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [], "decoder_weights_dist": [],
            "sourceSetName": source_id.split("-", 1)[1]}
    return feat, acts
