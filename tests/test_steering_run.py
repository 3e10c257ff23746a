"""The steering experiment end to end on tiny models (random stitch), its files, report and command."""

import json

import pytest
import torch

from stitchplug.stitch.model import Stitch
from stitchplug_steering.config import SteeringConfig
from stitchplug_steering.data import INSTRUCT_PROMPTS, build_prompts, parallel_pairs
from stitchplug_steering.report import report_section
from stitchplug_steering.steering_run import read_generations, run_steering, vector_texts


@pytest.fixture(scope="module")
def tiny_pair():
    from stitchplug.adapter import load_model

    return load_model("tiny-llama-a"), load_model("tiny-llama-b")


def test_vector_set_and_prompts_are_disjoint():
    cfg = SteeringConfig(languages=["fr", "es"], vector_docs=30)
    texts, titles = vector_texts(cfg, seed=0)
    assert len(texts["fr"]) == 30 and len(texts["es"]) == 30 and len(titles) == len(texts["en"])
    pairs = parallel_pairs("fr", 30, seed=0)
    assert pairs[:10] == parallel_pairs("fr", 10, seed=0)  # a larger set extends a smaller one
    prompts = build_prompts(["wiki", "instruct"], 40, 12, titles, seed=0)
    assert [p["source"] for p in prompts] == ["wiki"] * 20 + ["instruct"] * 20
    openings = {" ".join(t.split()[:12]) for t in texts["en"]}
    assert not openings & {p["text"] for p in prompts}
    # a short source leaves its share to the next one
    prompts = build_prompts(["instruct", "wiki"], len(INSTRUCT_PROMPTS) * 3, 8, titles)
    assert sum(p["source"] == "instruct" for p in prompts) == len(INSTRUCT_PROMPTS)
    assert len(prompts) == len(INSTRUCT_PROMPTS) * 3


def test_prompt_file_and_bad_sources(tmp_path):
    from stitchplug.errors import ConfigError

    f = tmp_path / "p.txt"
    f.write_text("First prompt\n\n  Second prompt  \n")
    assert [p["text"] for p in build_prompts([f"file:{f}"], 5, 8, set())] == ["First prompt", "Second prompt"]
    with pytest.raises(ConfigError, match="prompt file not found"):
        build_prompts([f"file:{tmp_path / 'nope.txt'}"], 5, 8, set())
    with pytest.raises(ConfigError, match="unknown prompt source"):
        build_prompts(["poems"], 5, 8, set())
    with pytest.raises(ConfigError, match="cannot be 'en'"):
        parallel_pairs("en", 3)


def test_run_steering_on_tiny_models(tiny_pair, tmp_path, one_thread):
    a, b = tiny_pair
    stitch = Stitch(a.d_model, b.d_model, seed=0)
    cfg = SteeringConfig(languages=["fr"], vector_docs=3, vector_tokens=16, n_prompts=3, max_new_tokens=3,
                         agreement_detector="none", examples=1)
    res = run_steering({"A": (a, 1, [0]), "B": (b, 2, [])}, stitch, cfg, tmp_path, seed=0, log=lambda m: None)
    want = {"A/none", "B/none", "A/fr/native", "B/fr/native", "B/fr/transferred-up", "A/fr/transferred-down",
            "A/fr/random", "B/fr/random"}
    assert set(res["arms"]) == want
    for label, rec in res["arms"].items():
        s = rec["share"]["fr"]
        assert s["n"] == 3 and 0 <= s["ci_low"] <= s["share"] <= s["ci_high"] <= 1
    # the random arm is clamped at the transferred arm's z; transferred z is recomputed in B
    vec = json.loads((tmp_path / "vectors.json").read_text())
    assert vec["B/fr/random"]["z"] == pytest.approx(vec["B/fr/transferred-up"]["z"])
    assert vec["B/fr/transferred-up"]["z"] == pytest.approx(vec["B/fr/transferred-up"]["z_target"])
    gens = read_generations(tmp_path)
    assert set(gens) == want and all(len(v) == 3 for v in gens.values())
    md = report_section(res, tmp_path)
    assert "B/fr/transferred-up" in md and "Example generations" in md
    # statistics are reused on a second run (same model, layer, languages)
    mtime = (tmp_path / "stats_A.safetensors").stat().st_mtime_ns
    run_steering({"A": (a, 1, [0]), "B": (b, 2, [])}, stitch, cfg.model_copy(update={"directions": ["up"]}),
                 tmp_path, seed=0, log=lambda m: None)
    assert (tmp_path / "stats_A.safetensors").stat().st_mtime_ns == mtime


def test_exclude_massive_zeroes_those_dims(tiny_pair, tmp_path, one_thread):
    a, b = tiny_pair
    stitch = Stitch(a.d_model, b.d_model, seed=0)
    cfg = SteeringConfig(languages=["fr"], vector_docs=3, vector_tokens=16, n_prompts=1, max_new_tokens=1,
                         agreement_detector="none", exclude_massive=True, z_mode="offset", z_scale=2.0,
                         fluency=False)
    run_steering({"A": (a, 1, [0, 5]), "B": (b, 2, [7])}, stitch, cfg, tmp_path, log=lambda m: None)
    from safetensors.torch import load_file

    vecs = load_file(str(tmp_path / "vectors.safetensors"))
    for label, v in vecs.items():
        dims = [0, 5] if label.startswith("A/") else [7]
        assert float(v[dims].abs().sum()) == 0.0, label
        assert float(v.norm()) == pytest.approx(1.0, rel=1e-5)
    info = json.loads((tmp_path / "vectors.json").read_text())["B/fr/native"]
    assert info["z"] == pytest.approx(info["z_en"] + 2.0 * (info["z_target"] - info["z_en"]), rel=1e-5)


def test_steer_command_prints_columns_and_refuses_bad_input(tiny_pair, tmp_path, capsys, one_thread):
    from stitchplug.cli import main
    from stitchplug.api import RunFolder

    a, b = tiny_pair
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    stitch = Stitch(a.d_model, b.d_model, seed=0)
    stitch.save(run / "stitch" / "stitch.safetensors", {"source_model": a.name, "target_model": b.name,
                                                        "source_layer": 1, "target_layer": 2})
    cfg = SteeringConfig(languages=["fr"], vector_docs=3, vector_tokens=16, n_prompts=1, max_new_tokens=1,
                         agreement_detector="none", fluency=False)
    run_steering({"A": (a, 1, []), "B": (b, 2, [])}, stitch, cfg, RunFolder(run).artifact("steering", "stats"),
                 log=lambda m: None)
    main(["steer", "--run", str(run), "--model", "B", "--prompt", "The river", "--max-new-tokens", "3"])
    out = capsys.readouterr().out
    assert "tiny-llama-b: unsteered" in out and "native (clamp z=" in out and "transferred-up (clamp" in out
    for argv, msg in ((["--model", "C"], "--model 'C' is neither"), (["--model", "A", "--lang", "de"], "language 'de'"),
                      (["--model", "A", "--run", str(tmp_path)], "is not a stitchplug run folder")):
        full = ["steer", "--run", str(run), "--prompt", "x"] + argv
        with pytest.raises(SystemExit) as exc:
            main(full)
        assert exc.value.code != 0
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
