"""Shared pytest fixtures. Add fixtures here; never rewrite other areas' fixtures.

The real default models are loaded once per session (``@pytest.mark.slow`` tests only).
"""

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M adapter (offline package; first load dequantises, ~1 min)."""
    from stitchplug.adapter import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma-3-270M adapter (offline package; first load dequantises, ~1 min)."""
    from stitchplug.adapter import load_model

    return load_model("gemma-3-270m")


@pytest.fixture
def one_thread():
    """Tiny matrices: torch's thread pool only adds overhead (and stalls on a busy 2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# -- a tiny analysed run folder for the browser (tests/test_browse*.py) ---------------------------
BROWSE_TINY = ["--cache-tokens", "3000", "--cache-context-size", "64", "--stitch-svcca-tokens", "500", "--stitch-refine-iters", "0",
               "--sae-width", "64", "--sae-k", "4", "--sae-train-tokens", "4000", "--sae-batch-size", "256",
               "--eval-docs", "4", "--eval-max-windows", "4", "--no-progress"]
BROWSE_ARGS = {"docs": 24, "top_k": 5, "window": 8, "chunk": 4, "checkpoint": 4}


def _cli(*args) -> int:
    from stitchplug.cli import main

    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="session")
def tiny_analysed_run(tmp_path_factory):
    """`stitchplug run` (tiny random models, SAE width 64) + `stitchplug analyze --budget smoke`, plus a
    probe and a steering artifact in their documented layouts (random vectors) for the vectors page."""
    import json

    from safetensors.torch import save_file

    out = tmp_path_factory.mktemp("browse") / "run"
    assert _cli("run", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3", "--output-dir", str(out),
                *BROWSE_TINY) == 0
    assert _cli("analyze", "--run", str(out), "--budget", "smoke", "--no-progress") == 0
    g = torch.Generator().manual_seed(0)
    stitch = json.loads((out / "stitch" / "stitch.safetensors.json").read_text())
    d_a, d_b = int(stitch.get("d_source", 0)), int(stitch.get("d_target", 0))
    for role, d in (("source", d_a), ("transferred", d_b)):
        folder = out / "artifacts" / "probe" / role
        folder.mkdir(parents=True)
        dense = {"coef": torch.randn(d, generator=g).tolist(), "intercept": 0.1, "indices": None}
        sparse = {"2": {"coef": [0.5, -0.3], "intercept": 0.0, "indices": [3, 7]}}
        (folder / "probes.json").write_text(json.dumps({"side": role, "tasks": {"wiki-topic:People": {
            "sparse": sparse, "dense": dense}}}))
    steer = out / "artifacts" / "steering" / "source"
    steer.mkdir(parents=True)
    save_file({"v:fr": torch.randn(d_a, generator=g)}, str(steer / "vectors.safetensors"))
    (steer / "steering.json").write_text(json.dumps({"model": "tiny-llama-a", "layer": 1, "role": "native"}))
    gens = out / "artifacts" / "steering" / "generations"
    gens.mkdir(parents=True)
    (gens / "native_on_A_fr.jsonl").write_text(json.dumps({"arm": "native_on_A/fr", "prompt": "The city",
                                                           "text": " est belle", "lang": "fr", "loss": 3.2}) + "\n")
    return out


@pytest.fixture(scope="session")
def browsed_run(tiny_analysed_run, tmp_path_factory):
    """A copy of the tiny run on which `stitchplug browse` finished (small settings: BROWSE_ARGS)."""
    import shutil

    out = tmp_path_factory.mktemp("browsed") / "run"
    shutil.copytree(tiny_analysed_run, out)
    args = [x for k, v in BROWSE_ARGS.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    assert _cli("browse", "--run", str(out), "--no-progress", *args) == 0
    return out


@pytest.fixture(scope="session")
def quick_sae_run(tmp_path_factory):
    """A finished ``stitchplug run --preset quick`` folder on the real pair (the README demo, ~3 min),
    built once per session. Read it; to run more stages in it, copy it first (:func:`shutil.copytree`)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("quick_sae") / "run"
    res = subprocess.run([sys.executable, "-m", "stitchplug.cli", "run", "--preset", "quick",
                          "--output-dir", str(out), "--no-progress"], capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    return out
