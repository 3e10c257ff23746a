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
        "aligners": ["example-positional"], "artifacts": ["example-nothing"], "corpora": ["example-corpus"],
        "evaluators": ["example-count"], "models": ["example-tiny"],
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


def test_duplicate_names_are_a_clear_error(tmp_path, example_site):
    fake_dist(tmp_path, "dup_plugin", "dup", "dup_mod", """
        from stitchplug.hookspecs import hookimpl

        @hookimpl
        def register_corpora(register):
            register("example-corpus", lambda **kw: [])
    """)
    res = run_cli(["plugins"], pythonpath=[tmp_path, example_site])
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "example-corpus" in lines[0] and "'dup'" in lines[0] and "'example'" in lines[0]


def test_load_plugins_env_restricts(example_site):
    res = run_cli(["plugins", "--json"], pythonpath=[example_site], env_extra={"STITCHPLUG_LOAD_PLUGINS": "example,corpora"})
    assert res.returncode == 0, res.stderr
    assert sorted(p["name"] for p in json.loads(res.stdout)) == ["corpora", "example"]
