"""Plugin discovery end to end: a third-party package installed with pip, a broken one, a clash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stitchplug import hookspecs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tests" / "example_plugin"
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("register_"))


def run_cli(args, pythonpath=None, env_extra=None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(p) for p in pythonpath] + [env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "stitchplug.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="session")
def example_site(tmp_path_factory):
    """pip-install the example plugin into an isolated folder (real wheel build, real entry points)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(EXAMPLE)], check=True, timeout=300)
    return target


def fake_dist(site: Path, dist: str, ep_name: str, module: str, source: str) -> None:
    """Write a minimal installed distribution (metadata + entry point) and its module."""
    info = site / f"{dist}-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(f"[stitchplug]\n{ep_name} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


def test_third_party_plugin_is_discovered(example_site):
    res = run_cli(["plugins", "--json"], pythonpath=[example_site])
    assert res.returncode == 0, res.stderr
    infos = {p["name"]: p for p in json.loads(res.stdout)}
    ex = infos["example"]
    assert ex["version"] == "0.0.1" and ex["error"] is None
    assert ex["registered"] == {
        "aligners": ["example-positional"], "artifacts": ["diffmean", "saelatent"], "corpora": ["example-corpus"],
        "evaluators": ["diffmean-separation", "example-count", "saelatent-agreement"], "models": ["example-tiny"],
    }
    # first-party plugins come through the same entry-point group
    assert {"models", "corpora", "sae", "sae_evals"} <= set(infos)


def test_plugin_command_is_added(example_site):
    res = run_cli(["example-hello"], pythonpath=[example_site])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "hello from stitchplug-example"


def test_every_hook_is_exercised_by_the_example_plugin():
    """Each hookspec is implemented by the example plugin, so the discovery tests cover it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stitchplug_example_src", EXAMPLE / "stitchplug_example" / "__init__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    implemented = sorted(n for n in dir(mod) if n.startswith("register_"))
    assert implemented == HOOKS


def test_every_hook_is_documented():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    for hook in HOOKS:
        assert f"### `{hook}" in doc, f"{hook} has no section in docs/plugins.md"
        section = doc.split(f"### `{hook}", 1)[1].split("\n### ", 1)[0]
        assert f"def {hook}(" in section, f"{hook} has no example in docs/plugins.md"
        assert getattr(hookspecs, hook).__doc__, f"{hook} has no docstring"


def test_broken_plugin_is_reported_and_others_keep_working(tmp_path):
    fake_dist(tmp_path, "broken_plugin", "broken", "broken_mod", "raise RuntimeError('boom at import')\n")
    res = run_cli(["plugins", "--json"], pythonpath=[tmp_path])
    assert res.returncode == 0, res.stderr
    infos = {p["name"]: p for p in json.loads(res.stdout)}
    assert infos["broken"]["error"] == "RuntimeError: boom at import"
    assert infos["corpora"]["error"] is None
    text = run_cli(["plugins"], pythonpath=[tmp_path])
    assert "broken 0.0.1  ERROR: RuntimeError: boom at import" in text.stdout
    assert "Warning: plugin 'broken' failed to load and is skipped: RuntimeError: boom at import" in text.stderr
    # asking for something only a broken plugin could provide names the broken plugin, in one line
    res = run_cli(["model-info", "from-broken-plugin"], pythonpath=[tmp_path])
    assert res.returncode != 0 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "unknown model 'from-broken-plugin'" in last and "plugin 'broken' failed to load" in last


def test_duplicate_names_disable_the_later_one_with_a_warning(tmp_path, example_site):
    fake_dist(tmp_path, "dup_plugin", "dup", "dup_mod", """
        from stitchplug.hookspecs import hookimpl

        @hookimpl
        def register_corpora(register):
            register("example-corpus", lambda **kw: [])
            register("dup-only", lambda **kw: [])
    """)
    res = run_cli(["plugins", "--json"], pythonpath=[tmp_path, example_site])
    assert res.returncode == 0, res.stderr  # a clash no longer takes every command down
    infos = {p["name"]: p for p in json.loads(res.stdout)}
    warn = [ln for ln in res.stderr.splitlines() if "example-corpus" in ln]
    assert len(warn) == 1 and "'dup'" in warn[0] and "'example'" in warn[0] and "disabled" in warn[0]
    owners = [n for n in ("dup", "example") if "example-corpus" in infos[n]["registered"].get("corpora", [])]
    assert len(owners) == 1  # exactly one plugin serves the name
    assert "dup-only" in infos["dup"]["registered"]["corpora"]  # the rest of the plugin keeps working


def test_first_party_name_wins_a_clash(tmp_path):
    fake_dist(tmp_path, "aaa_plugin", "aaa", "aaa_mod", """
        from stitchplug.hookspecs import hookimpl

        @hookimpl
        def register_corpora(register):
            register("wiki-en", lambda **kw: [{"text": "hijacked", "doc_id": 0}])
    """)
    res = run_cli(["plugins", "--json"], pythonpath=[tmp_path])
    assert res.returncode == 0, res.stderr
    infos = {p["name"]: p for p in json.loads(res.stdout)}
    assert "wiki-en" in infos["corpora"]["registered"]["corpora"]
    assert "wiki-en" not in infos["aaa"]["registered"].get("corpora", [])
    assert any("'wiki-en'" in ln and "using 'corpora'" in ln for ln in res.stderr.splitlines())


def test_hook_error_is_warned_on_every_command(tmp_path):
    fake_dist(tmp_path, "bad_hook", "badhook", "badhook_mod", """
        from stitchplug.hookspecs import hookimpl

        @hookimpl
        def register_models(register):
            raise ValueError("cannot register")

        @hookimpl
        def register_commands(cli):
            raise RuntimeError("no command today")
    """)
    res = run_cli(["models"], pythonpath=[tmp_path])  # a command unrelated to the broken plugin
    assert res.returncode == 0, res.stderr
    assert "smollm2-135m" in res.stdout
    assert "Warning: plugin 'badhook' failed to load and is skipped: ValueError in register_models: cannot register" \
        in res.stderr
    assert "Traceback" not in res.stderr


def test_unknown_name_in_load_plugins_env_is_a_warning():
    res = run_cli(["plugins", "--json"], env_extra={"STITCHPLUG_LOAD_PLUGINS": "corpora,no-such-plugin"})
    assert res.returncode == 0, res.stderr
    assert [p["name"] for p in json.loads(res.stdout)] == ["corpora"]
    warn = [ln for ln in res.stderr.splitlines() if "no-such-plugin" in ln]
    assert len(warn) == 1 and "not installed" in warn[0] and "'corpora'" not in warn[0] and "sae" in warn[0]


def test_load_plugins_env_restricts(example_site):
    res = run_cli(["plugins", "--json"], pythonpath=[example_site], env_extra={"STITCHPLUG_LOAD_PLUGINS": "example,corpora"})
    assert res.returncode == 0, res.stderr
    assert sorted(p["name"] for p in json.loads(res.stdout)) == ["corpora", "example"]


def test_third_party_artifact_kind_runs_end_to_end(example_site, tmp_path):
    """`stitchplug run --artifact diffmean`: a kind, its config section, preset and evaluator all come
    from the example plugin; the core has never heard of it."""
    out = tmp_path / "dm"
    args = ["run", "--artifact", "diffmean", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3",
            "--output-dir", str(out), "--cache-tokens", "4000", "--cache-context-size", "64",
            "--cache-eval-fraction", "0.3", "--stitch-svcca-tokens", "500", "--eval-docs", "2",
            "--eval-max-windows", "2", "--diffmean-max-docs", "40", "--diffmean-max-tokens", "32", "--no-progress"]
    help_text = run_cli(["run", "--help"], pythonpath=[example_site]).stdout
    assert "--diffmean-label-field" in help_text and "--diffmean-max-docs INTEGER" in " ".join(help_text.split())
    res = run_cli(args, pythonpath=[example_site])
    assert res.returncode == 0, res.stderr[-3000:]
    import yaml
    from safetensors.torch import load_file

    from stitchplug.api import Stitch

    snap = yaml.safe_load((out / "config.yaml").read_text())
    assert snap["artifact"] == "diffmean" and snap["diffmean"]["max_docs"] == 40 and "sae" not in snap
    m = json.loads((out / "metrics.json").read_text())
    res_dm = m["diffmean"]
    assert set(res_dm) == {"source_on_A", "transferred_on_B", "random_on_B"}
    for label, ev in res_dm.items():
        sep = ev["diffmean-separation"]
        assert sep["n_eval_docs"] >= 2 and (sep["auroc"] is None or 0.0 <= sep["auroc"] <= 1.0)
    # the transfer is exactly direction @ P_up (the bias cancels in a difference of means)
    src = load_file(str(out / "artifacts/diffmean/source/direction.safetensors"))["direction"]
    tgt = load_file(str(out / "artifacts/diffmean/transferred/direction.safetensors"))["direction"]
    st = Stitch.load(out / "stitch" / "stitch.safetensors")
    assert src.shape == (32,) and tgt.shape == (40,)
    assert (tgt - src @ st.P_up.detach()).abs().max() < 1e-5
    # on A, the source direction is the native one: cosine 1 with the direction the evaluator recomputes
    assert res_dm["source_on_A"]["diffmean-separation"]["cosine_to_native"] == pytest.approx(1.0, abs=1e-5)
    report = (out / "report.md").read_text()
    assert "## Difference-of-means direction" in report and "Stitched next-token loss" in report
    assert "source_on_A: AUROC" in res.stdout  # the kind's one-line summaries
    # an unknown field of the kind's section is refused by its own config class, in one line
    bad = run_cli(args + ["--config", str(_yaml(tmp_path, {"diffmean": {"colour": "red"}}))], pythonpath=[example_site])
    assert bad.returncode == 2 and "diffmean.colour" in bad.stderr and "Traceback" not in bad.stderr


def test_kind_that_builds_on_sae_runs_end_to_end(example_site, tmp_path):
    """`stitchplug run --artifact saelatent` (``requires = ("sae",)``): the pipeline runs the SAE kind's
    stages first, once, with the run's ``sae`` section, and hands the SAEs over by role; a later
    ``--artifact sae`` run in the same folder reuses them."""
    out = tmp_path / "sl"
    core = ["--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3", "--output-dir", str(out),
            "--cache-tokens", "4000", "--cache-context-size", "64", "--cache-eval-fraction", "0.3",
            "--stitch-svcca-tokens", "500", "--eval-docs", "2", "--eval-max-windows", "2", "--no-progress",
            "--sae-width", "64", "--sae-k", "4", "--sae-train-tokens", "2048", "--sae-batch-size", "256",
            "--cache-aligner", "example-positional"]  # a registered aligner works from `run`
    res = run_cli(["run", "--artifact", "saelatent", *core], pythonpath=[example_site])
    assert res.returncode == 0, res.stderr[-3000:]
    from stitchplug.api import open_cache

    with open_cache(out / "cache.h5") as cache:
        assert cache.attrs["alignment_method"] == "example-positional"
    for stage in ("sae.source", "sae.transfer", "sae.baseline", "sae.native", "saelatent.source",
                  "saelatent.transfer", "saelatent.baseline", "saelatent.evaluate"):
        assert (out / "stages" / f"{stage}.json").is_file(), stage
    assert not (out / "stages" / "sae.evaluate.json").exists()  # only the stages that make artifacts
    import yaml

    snap = yaml.safe_load((out / "config.yaml").read_text())
    assert snap["artifact"] == "saelatent" and snap["sae"]["width"] == 64
    m = json.loads((out / "metrics.json").read_text())
    sl = m["saelatent"]
    assert set(sl) == {"source_on_A", "transferred_on_B", "random_on_B"}
    # the source direction is the source SAE's row; Eq. 6 makes the transferred SAE's row its image
    assert sl["source_on_A"]["saelatent-agreement"]["cosine_to_sae_row"] == pytest.approx(1.0, abs=1e-5)
    assert sl["transferred_on_B"]["saelatent-agreement"]["cosine_to_sae_row"] == pytest.approx(1.0, abs=1e-4)
    assert abs(sl["random_on_B"]["saelatent-agreement"]["cosine_to_sae_row"]) < 0.9
    assert 0.0 <= sl["transferred_on_B"]["saelatent-agreement"]["best_cosine_to_native"] <= 1.0 + 1e-6
    native = json.loads((out / "artifacts" / "sae" / "native" / "cfg.json").read_text())
    assert native["d_in"] == 40 and native["d_sae"] == 64  # trained on B at the source SAE's budget
    # an SAE run in the same folder reuses the SAE stages the dependent run made
    res = run_cli(["run", "--artifact", "sae", *core], pythonpath=[example_site])
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr  # stage lines go to stderr
    for stage in ("sae.source", "sae.transfer", "sae.baseline"):
        assert f"[{stage}] reused" in log and f"[{stage}] done" not in log, stage
    assert "[sae.evaluate] done" in log


def _yaml(tmp_path, data):
    import yaml

    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p
