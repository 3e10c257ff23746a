"""docs/plugins.md against the code: the exported names are ``stitchplug.api.__all__`` and the
first-party plugin table is the entry points and what each registers."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "plugins.md").read_text()


def _between(tag: str) -> str:
    m = re.search(rf"<!-- {tag} -->(.*?)<!-- /{tag} -->", DOC, re.S)
    assert m, f"docs/plugins.md lost its <!-- {tag} --> block"
    return m.group(1)


def test_documented_api_names_are_the_exported_ones():
    import stitchplug.api as api

    documented = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", _between("api-names")))
    assert documented == set(api.__all__), (f"missing from the docs: {sorted(set(api.__all__) - documented)}; "
                                            f"not exported: {sorted(documented - set(api.__all__))}")


def test_plugin_table_lists_every_first_party_plugin_and_what_it_registers():
    from stitchplug.plugins import plugin_infos

    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["stitchplug"]
    rows = {}
    for line in _between("plugins").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(eps), f"table {sorted(rows)} != entry points {sorted(eps)}"
    for name, (_, package, registers) in rows.items():
        assert package.strip("`") == eps[name], name
    infos = {i.name: i for i in plugin_infos()}
    for name in eps:
        info = infos[name]
        assert info.error is None, (name, info.error)
        for kind, names in info.registered.items():
            assert kind in rows[name][2], f"plugin {name!r} registers {kind} but the table does not say so"
            if kind in ("artifacts", "aligners"):
                for n in names:
                    assert f"`{n}`" in rows[name][2], f"plugin {name!r} registers {kind} {n!r}"


def test_docs_examples_import_only_the_public_api():
    bad = [m for m in re.findall(r"from (stitchplug[\w.]*) import", DOC) if m != "stitchplug.api"]
    assert not bad, bad
