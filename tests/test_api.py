"""The public API seam: plugins import the core only through ``stitchplug.api``; no import cycles;
one hook-name format; a third-party artifact kind runs end to end from a plugin alone."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_ROOTS = [ROOT / "plugins", ROOT / "tests" / "example_plugin"]


def _modules(base: Path, roots: list[Path]) -> dict[str, Path]:
    out = {}
    for root in roots:
        for path in root.rglob("*.py"):
            rel = path.relative_to(base if root == base / "stitchplug" else root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, imported module, names)`` of every import in the file (function-local ones too)."""
    tree = ast.parse(path.read_text())
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out.append((node.lineno, base, [a.name for a in node.names]))
    return out


ALL = {**_modules(ROOT, [ROOT / "stitchplug"]), **_modules(ROOT, PLUGIN_ROOTS)}


def test_first_party_plugins_import_the_core_only_through_the_public_api():
    bad = []
    for module, path in _modules(ROOT, PLUGIN_ROOTS).items():
        for line, target, names in _imports(module, path):
            if target == "stitchplug" and set(names) <= {"api", "__version__"}:
                continue
            if target.startswith("stitchplug") and target.split(".")[0] == "stitchplug" and target != "stitchplug.api":
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "plugins must import the core only through stitchplug.api:\n" + "\n".join(bad)


def _plugin_packages() -> set[str]:
    return {p.parent.name for root in PLUGIN_ROOTS for p in root.glob("*/__init__.py")}


def _cross_plugin_imports(modules: dict[str, Path]) -> list[str]:
    packages = _plugin_packages()
    bad = []
    for module, path in modules.items():
        own = module.split(".")[0]
        for line, target, names in _imports(module, path):
            top = target.split(".")[0]
            if top in packages and top != own:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {target}")
    return bad


def test_no_plugin_imports_another_plugin():
    """Plugins meet only at the registry (and ``requires``): never ``import stitchplug_sae`` from another plugin."""
    modules = _modules(ROOT, PLUGIN_ROOTS)
    assert {"stitchplug_sae", "stitchplug_probe", "stitchplug_example"} <= _plugin_packages()
    bad = _cross_plugin_imports(modules)
    assert not bad, "a plugin imports another plugin's modules:\n" + "\n".join(bad)


def test_cross_plugin_guard_catches_an_import(tmp_path):
    """The guard above fails on a module-level or function-local import of another plugin."""
    bad = tmp_path / "stitchplug_probe" / "x.py"
    bad.parent.mkdir()
    bad.write_text("def f():\n    from stitchplug_sae.artifact import SAEArtifact\n    import stitchplug_corpora\n")
    global ROOT
    old = ROOT
    try:
        ROOT = tmp_path
        found = _cross_plugin_imports({"stitchplug_probe.x": bad})
    finally:
        ROOT = old
    assert len(found) == 2 and "stitchplug_sae.artifact" in found[0] and "stitchplug_corpora" in found[1]


def test_public_api_exports_resolve():
    import stitchplug.api as api

    for name in api.__all__:
        assert getattr(api, name) is not None, name
    with pytest.raises(AttributeError):
        api.no_such_name  # noqa: B018


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in ALL}
    for module, path in ALL.items():
        for _, target, names in _imports(module, path):
            for cand in [f"{target}.{n}" for n in names] + [target]:
                if cand in ALL and cand != module:
                    graph[module].add(cand)
                    break
    return graph


def test_no_import_cycles():
    """Module-level and function-local imports alike: a cycle means two modules know each other."""
    graph = _graph()
    # a package's __init__ importing its own submodules (re-export) is not a cycle between ideas
    for m in graph:
        graph[m] = {t for t in graph[m] if not (t.startswith(m + ".") and ALL[m].name == "__init__.py")}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_hook_name_format_exists_once():
    hits = []
    for path in list((ROOT / "stitchplug").rglob("*.py")) + list((ROOT / "plugins").rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if "hook_resid_pre" in code and ('f"' in code or "re.compile" in code or "f'" in code):
                hits.append(f"{path.relative_to(ROOT)}:{i}")
    assert hits and all(h.startswith("stitchplug/hooks.py:") for h in hits), hits
    from stitchplug.api import hook_layer, resid_hook

    assert resid_hook(7) == "blocks.7.hook_resid_pre" and hook_layer(resid_hook(7)) == 7
    assert hook_layer("blocks.7.hook_resid_post") is None and hook_layer(None) is None
