"""The ``stitchplug`` command line. Errors the user can fix print one line and exit non-zero."""

from __future__ import annotations

import functools
import json
import sys
import typing

import click

from . import __version__
from .config import RunConfig, build_config, leaf_fields
from .errors import StitchplugError


def _flag(dotted: str) -> str:
    return "--" + dotted.replace(".", "-").replace("_", "-")


def _parse_value(info, raw: str):
    if raw.lower() in ("none", "null"):
        return None
    args = typing.get_args(info.annotation)
    literals = {str(v) for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)}
    if raw in literals:
        return raw
    if info.annotation is list or any(typing.get_origin(a) is list for a in args) or typing.get_origin(info.annotation) is list:
        return [int(x) for x in raw.split(",") if x.strip()]
    return raw


def config_options(cls=RunConfig, with_preset: bool = True):
    """Add ``--config``, ``--preset`` and one flag per config field (help from its docstring).

    The wrapped command receives ``cfg`` (a validated ``cls``) instead of the raw flags.
    """

    fields = list(leaf_fields(cls))

    def decorator(fn):
        @functools.wraps(fn)
        def wrapper(*args, config_file=None, preset=None, **kwargs):
            overrides = {}
            for dotted, info in fields:
                key = "cfg__" + dotted.replace(".", "__")
                raw = kwargs.pop(key, None)
                if raw is not None:
                    overrides[dotted] = _parse_value(info, raw)
            cfg = build_config(preset=preset, file=config_file, overrides=overrides, cls=cls)
            return fn(*args, cfg=cfg, **kwargs)

        for dotted, info in reversed(fields):
            default = info.default
            shown = "none" if default is None else default
            help_text = f"{info.description or ''} [config: {dotted}; default: {shown}]"
            wrapper = click.option(_flag(dotted), "cfg__" + dotted.replace(".", "__"), default=None,
                                   metavar="VALUE", help=help_text)(wrapper)
        if with_preset:
            wrapper = click.option("--preset", default=None, help="Preset: quick (minutes on a laptop CPU) or default.")(wrapper)
        wrapper = click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                               help="YAML or TOML config file; flags override it.")(wrapper)
        return wrapper

    return decorator


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stitchplug")
def cli():
    """Transfer SAEs, probes and steering vectors between language models through affine stitches."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plugins(as_json):
    """List installed plugins, their versions and what each registered."""
    from .plugins import plugin_infos

    infos = plugin_infos()
    if as_json:
        click.echo(json.dumps([i.__dict__ for i in infos], indent=2))
        return
    for info in infos:
        click.echo(f"{info.name} {info.version or '?'}" + (f"  ERROR: {info.error}" if info.error else ""))
        for kind, names in sorted(info.registered.items()):
            click.echo(f"  {kind}: {', '.join(names)}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--all", "show_all", is_flag=True, help="List every namespaced name (e.g. each tl:<official name>).")
def models(as_json, show_all):
    """List the models that can be loaded and where each comes from."""
    from .plugins import registry

    rows = [{"name": e.name, "source": e.source, "description": e.description, "plugin": e.plugin}
            for e in registry().entries["models"].values()]
    rows.sort(key=lambda r: r["name"])
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    spaces: dict[str, int] = {}
    if not show_all:
        plain = [r for r in rows if ":" not in r["name"]]
        for r in rows:
            if ":" in r["name"]:
                spaces[r["name"].split(":", 1)[0]] = spaces.get(r["name"].split(":", 1)[0], 0) + 1
        rows = plain
    width = max([len(r["name"]) for r in rows] + [4])
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['source']}  {r['description']}")
    for space, n in sorted(spaces.items()):
        click.echo(f"{space + ':<name>':<{width}}  {n} more names in this namespace (stitchplug models --all)")


def _add_core_commands() -> None:
    """Commands that live in their own modules (kept out of this file to keep it small)."""
    import importlib

    for module in ("stitchplug.cache.cli", "stitchplug.stitch.cli", "stitchplug.run.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue  # not built yet
            raise
        mod.register(cli)


def _add_plugin_commands() -> None:
    from .plugins import FAILED, WARNINGS, pm, registry

    registry()  # imports every plugin and runs its register_* hooks, so their problems show on every command
    for impl in pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # one plugin's broken command must not take every command down
            FAILED.setdefault(impl.plugin_name, f"{type(exc).__name__} in register_commands: {exc}")
    for name, err in sorted(FAILED.items()):
        click.echo(f"Warning: plugin {name!r} failed to load and is skipped: {err}", err=True)
    for warning in WARNINGS:
        click.echo(f"Warning: {warning}", err=True)


def main(argv=None) -> None:
    """Entry point: run the CLI, turning :class:`StitchplugError` into one line on stderr."""
    try:
        _add_core_commands()
        _add_plugin_commands()
        code = cli.main(args=argv, prog_name="stitchplug", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except StitchplugError as err:
        for line in str(err).splitlines() or [type(err).__name__]:
            click.echo(f"Error: {line}", err=True)
        sys.exit(err.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo("Interrupted; finished stages are kept and a re-run resumes.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
