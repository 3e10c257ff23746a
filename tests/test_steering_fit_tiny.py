"""`stitchplug experiment steering-fit` end to end on the tiny random-init models: a stitch fitted on
English and one on a mix, held-out documents of every language in the mix cache's eval split,
vectors/prompts/FVU texts outside every fitting set, both directions, resumable; a mixed-corpus run
folder takes `stitchplug run --artifact steering`; the cache's and run's fingerprints follow the mix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

MIX = "mix:wiki-en=0.6,wiki-fr=0.2,wiki-es=0.2"
TINY = ["--source", "tiny-llama-a", "--target", "tiny-gemma3", "--set", "stitch.svcca_tokens=500",
        "--set", "cache.context_size=64", "--set", "cache.eval_fraction=0.3", "--set", "eval.docs=4",
        "--set", "eval.max_windows=4"]
ARGS = ["experiment", "steering-fit", "--fitting", "wiki-en", "--fitting", MIX, "--sizes", "6000", *TINY,
        "--languages", "fr", "--prompts", "3", "--max-new-tokens", "2", "--vector-docs", "3",
        "--vector-tokens", "16", "--fvu-docs", "2", "--second-detector", "langdetect", "--detector", "lingua-fast"]


def stitchplug(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "stitchplug.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("sfit") / "exp"
    res = stitchplug(*ARGS, "--run-root", str(root))
    assert res.returncode == 0, res.stderr[-3000:]
    return root, res


def test_every_cell_is_measured_and_reported(experiment):
    root, res = experiment
    m = json.loads((root / "metrics.json").read_text())["steering_fit"]
    cells = {(c["corpus"], c["direction"]) for c in m["cells"]}
    assert cells == {(c, d) for c in ("wiki-en", MIX) for d in ("up", "down")}
    for c in m["cells"]:
        for key in ("none", "native", "transferred", "transferred_2"):
            assert c[key]["n"] == 3 and 0 <= c[key]["ci_low"] <= c[key]["ci_high"] <= 1
        assert c["fvu"]["n_tokens"] > 0 and c["fvu"]["fvu"] > 0
        assert set(c["swaps"]) == {"coverage", "massive", "z"}
        assert c["fluency"]["transferred"] is not None
    en = next(c for c in m["cells"] if c["corpus"] == "wiki-en")
    assert not en["covered"] and en["swaps"]["coverage"]["with"] == MIX
    fits = {f["corpus"]: f for f in m["fits"]}
    assert fits["wiki-en"]["layers"] == fits[MIX]["layers"]  # every stitch maps the same streams
    assert set(fits[MIX]["fvu"]) == {"en", "fr"}
    report = (root / "report.md").read_text()
    assert "Steering transfer by fitting text" in report and "Held-out FVU per language" in report
    assert "wiki-en (no target-language text fitted)" in report
    assert res.stdout.strip().endswith("report.md")
    # two fits and the evaluation share one load of each model
    assert res.stderr.count("loading tiny-llama-a") == 1 and res.stderr.count("loading tiny-gemma3") == 1


def test_heldout_documents_cover_every_language_and_stay_out_of_fitting(experiment):
    root, _ = experiment
    from stitchplug.api import RunFolder
    from stitchplug_steering.heldout import split_coverage, split_docs

    held = json.loads((root / "steering_fit" / "heldout.json").read_text())
    assert held["overlaps"] and not any(held["overlaps"].values())
    mix_folder = next(p for p in (root / "fits").iterdir() if p.name.startswith("mix-"))
    with RunFolder(mix_folder).open_cache() as cache:
        cov = split_coverage(cache, MIX)
        train = split_docs(cache, MIX, "train")
    assert set(cov) == {"wiki-en", "wiki-fr", "wiki-es"} and all(n["eval"] > 0 for n in cov.values())
    assert held["coverage"][str(mix_folder)] == cov
    vec = set(held["vector_titles"]["fr"])
    assert not vec & {d for c, d in train if c in ("wiki-fr", "wiki-en")}
    assert not {p["doc_id"] for p in held["prompts"]} & {d for c, d in train if c == "wiki-en"}


def test_a_rerun_resumes_without_evaluating_again(experiment):
    root, first = experiment
    before = json.loads((root / "metrics.json").read_text())["steering_fit"]["cells"]
    res = stitchplug(*ARGS, "--run-root", str(root))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[cache] reused" in res.stderr and "[stitch] reused" in res.stderr
    assert "steering: " not in res.stderr and res.stderr.count(": reused") >= 4 + 2 * 2 * 3
    after = json.loads((root / "metrics.json").read_text())["steering_fit"]["cells"]
    assert [c["transferred"] for c in after] == [c["transferred"] for c in before]


def test_the_mixed_corpus_folder_takes_the_steering_run_end_to_end(experiment):
    root, _ = experiment
    mix_folder = next(p for p in (root / "fits").iterdir() if p.name.startswith("mix-"))
    res = stitchplug("run", "--config", str(mix_folder / "config.yaml"), "--output-dir", str(mix_folder),
                     "--steering-languages", "fr", "--steering-vector-docs", "3", "--steering-vector-tokens", "16",
                     "--steering-n-prompts", "2", "--steering-max-new-tokens", "2",
                     "--steering-agreement-detector", "none", "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[cache] reused" in res.stderr and "[stitch] reused" in res.stderr
    m = json.loads((mix_folder / "metrics.json").read_text())
    assert m["config"]["cache"]["corpus"] == MIX and "transferred_on_B" in m["steering"]


def test_the_cache_and_run_fingerprints_follow_the_mix(experiment, tmp_path):
    from stitchplug.api import fit_run_folder
    from stitchplug.errors import StageError
    from stitchplug.fingerprints import content_fingerprint

    root, _ = experiment
    mix_folder = next(p for p in (root / "fits").iterdir() if p.name.startswith("mix-"))
    cfg = yaml.safe_load((mix_folder / "config.yaml").read_text())
    over = {"models.source": "tiny-llama-a", "models.target": "tiny-gemma3", "stitch.svcca_tokens": 500,
            "cache.context_size": 64, "cache.eval_fraction": 0.3, "cache.tokens": 6000,
            "stitch.source_layer": cfg["stitch"]["source_layer"], "stitch.target_layer": cfg["stitch"]["target_layer"]}
    other = "mix:wiki-en=0.8,wiki-fr=0.1,wiki-es=0.1"
    with pytest.raises(StageError, match="cache.corpus"):  # the same folder refuses another mix
        fit_run_folder(str(mix_folder), preset="quick", overrides=over | {"cache.corpus": other}, log=lambda m: None)
    res = fit_run_folder(str(tmp_path / "other"), preset="quick", overrides=over | {"cache.corpus": other},
                         log=lambda m: None)
    assert res["config"]["cache"]["corpus"] == other
    assert content_fingerprint(tmp_path / "other" / "cache.h5") != content_fingerprint(mix_folder / "cache.h5")
    m1 = json.loads((mix_folder / "stages" / "cache.json").read_text())["deps"]
    m2 = json.loads((tmp_path / "other" / "stages" / "cache.json").read_text())["deps"]
    assert m1["cache"]["corpus"] == MIX and m2["cache"]["corpus"] == other
