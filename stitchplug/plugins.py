"""Plugin discovery through the ``stitchplug`` entry-point group, and the registries it fills.

First-party plugins (``plugins/``) are found exactly like third-party ones: through entry points.
``STITCHPLUG_LOAD_PLUGINS=a,b`` restricts loading to the named entry points (an unknown name is a
warning listing the installed ones). A plugin that fails to import or whose ``register_*`` hook raises
is recorded in :data:`FAILED` and the others keep working. Two plugins registering the same name do
not take the tool down: the first-party plugin's name wins (else the first loaded), the other is
disabled, and :data:`WARNINGS` names both. The CLI prints every failure and warning on every command.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import PluginError

GROUP = "stitchplug"
KINDS = ("models", "corpora", "artifacts", "evaluators", "aligners")


@dataclass
class Entry:
    """One registered thing: ``factory`` builds it on demand."""

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str = ""
    source: str = ""
    plugin: str = ""


@dataclass
class PluginInfo:
    name: str
    version: str | None
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


def _noun(kind: str) -> str:
    return "corpus" if kind == "corpora" else kind[:-1]


class Registry:
    """Name -> :class:`Entry` for each kind, built by calling every ``register_*`` hook."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}

    def add(self, entry: Entry) -> None:
        """Add ``entry``; on a name clash keep one (first-party first, else the earlier) and warn."""
        table = self.entries[entry.kind]
        if entry.name in table:
            old = table[entry.name]
            keep, drop = old, entry
            if entry.plugin in FIRST_PARTY and old.plugin not in FIRST_PARTY:
                keep, drop = entry, old
            table[entry.name] = keep
            WARNINGS.append(f"{_noun(entry.kind)} name {entry.name!r} is registered by both plugin "
                            f"{old.plugin!r} and plugin {entry.plugin!r}; using {keep.plugin!r}'s, "
                            f"{drop.plugin!r}'s is disabled")
            return
        table[entry.name] = entry

    def get(self, kind: str, name: str) -> Entry:
        table = self.entries[kind]
        if name not in table:
            names = sorted(table)
            if len(names) > 40:  # e.g. one namespaced entry per hub model ("tl:<name>"): keep one line short
                plain = [n for n in names if ":" not in n][:40]
                groups: dict[str, int] = {}
                for n in names:
                    if ":" in n:
                        groups[n.split(":", 1)[0]] = groups.get(n.split(":", 1)[0], 0) + 1
                parts = plain + [f"{p}:<name> ({c} names)" for p, c in sorted(groups.items())]
                lister = "stitchplug models" if kind == "models" else "stitchplug plugins"
                known = ", ".join(parts) + f"; `{lister}` lists all"
            else:
                known = ", ".join(names) or "none"
            broken = "".join(f"; plugin {p!r} failed to load ({e})" for p, e in sorted(FAILED.items()))
            raise PluginError(f"unknown {_noun(kind)} {name!r} (known: {known})"
                              + broken)
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])


pm = pluggy.PluginManager(GROUP)
pm.add_hookspecs(hookspecs)
FAILED: dict[str, str] = {}
"""Plugin name -> why it failed to import or register."""
WARNINGS: list[str] = []
"""Problems that disabled part of a plugin (name clashes, unknown names in STITCHPLUG_LOAD_PLUGINS)."""
FIRST_PARTY: set[str] = set()
"""Entry-point names that come with stitchplug itself (they win name clashes)."""
_loaded = False
_registry: Registry | None = None


def _allowed() -> set[str] | None:
    raw = os.environ.get("STITCHPLUG_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def load_plugins() -> None:
    """Import every entry point in the group once; failures are recorded, not raised."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    allowed = _allowed()
    eps = list(metadata.entry_points(group=GROUP))
    for ep in eps:
        if ep.dist is not None and ep.dist.name == "stitchplug":
            FIRST_PARTY.add(ep.name)
    eps.sort(key=lambda ep: ep.name not in FIRST_PARTY)  # first-party plugins register first
    if allowed is not None:
        unknown = sorted(allowed - {ep.name for ep in eps})
        if unknown:
            WARNINGS.append(f"STITCHPLUG_LOAD_PLUGINS names {', '.join(map(repr, unknown))}, which "
                            f"{'is' if len(unknown) == 1 else 'are'} not installed "
                            f"(installed: {', '.join(sorted(ep.name for ep in eps))})")
    for ep in eps:
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the tool down
            FAILED[ep.name] = f"{type(exc).__name__}: {exc}"


def _plugin_version(name: str) -> str | None:
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == GROUP and ep.name == name:
                return dist.version
    return None


def registry() -> Registry:
    """The registry of everything the loaded plugins registered (built once, then cached)."""
    global _registry
    if _registry is None:
        load_plugins()
        reg = Registry()
        for plugin_name, plugin in list(pm.list_name_plugin()):
            if plugin_name in FAILED:
                continue
            for kind in KINDS:
                hook = getattr(plugin, f"register_{kind}", None)
                if hook is None:
                    continue

                def register(name, factory, description="", source="", _k=kind, _p=plugin_name):
                    reg.add(Entry(_k, name, factory, description, source, _p))

                try:
                    hook(register=register)
                except Exception as exc:
                    FAILED[plugin_name] = f"{type(exc).__name__} in register_{kind}: {exc}"
        _registry = reg
    return _registry


def get(kind: str, name: str) -> Entry:
    return registry().get(kind, name)


def plugin_infos() -> list[PluginInfo]:
    """Each plugin with its version, what it registered, and its error if it failed."""
    reg = registry()
    infos: dict[str, PluginInfo] = {}
    for plugin_name, _ in pm.list_name_plugin():
        infos[plugin_name] = PluginInfo(plugin_name, _plugin_version(plugin_name))
    for name, err in FAILED.items():
        infos.setdefault(name, PluginInfo(name, _plugin_version(name))).error = err
    for kind, table in reg.entries.items():
        for entry in table.values():
            if entry.plugin in infos:
                infos[entry.plugin].registered.setdefault(kind, []).append(entry.name)
    for info in infos.values():
        for names in info.registered.values():
            names.sort()
    return sorted(infos.values(), key=lambda i: i.name)


def reset() -> None:
    """Forget loaded plugins (tests use this after changing ``STITCHPLUG_LOAD_PLUGINS``)."""
    global _loaded, _registry
    for name, plugin in list(pm.list_name_plugin()):
        pm.unregister(plugin, name=name)
    FAILED.clear()
    WARNINGS.clear()
    FIRST_PARTY.clear()
    _loaded = False
    _registry = None


def lazy_factory(module: str, attr: str, name: str):
    """A registry factory that imports ``module`` only when first called and builds the class named
    ``name`` from its list ``attr`` (e.g. ``EVALUATORS``): registering a plugin stays import-cheap."""

    def make():
        classes = getattr(importlib.import_module(module), attr)
        return next(cls for cls in classes if cls.name == name)()

    return make

