"""The ``stitchplug`` command line. Errors the user can fix print one line and exit non-zero."""

from __future__ import annotations

import functools
import json
import sys
import types
import typing

import click

from . import __version__, interrupt
from .config import RunConfig, build_config, leaf_fields
from .errors import StitchplugError


def _flag(dotted: str) -> str:
    return "--" + dotted.replace(".", "-").replace("_", "-")


_NONE = ("none", "null")


_NO_CHOICE = object()


def _choice(choices: tuple, raw: str):
    """The ``Literal`` choice spelled ``raw`` on the command line, or ``_NO_CHOICE``."""
    return next((c for c in choices if str(c) == raw), _NO_CHOICE)


class FieldType(click.ParamType):
    """A click type built from a pydantic field's annotation: ``Literal`` choices, int, float, str,
    comma-separated int/float lists, and ``None`` (spelled ``none``) where the field allows it.
    Click refuses a wrong value naming the flag; pydantic then checks ranges."""

    def __init__(self, annotation):
        self.members = self._members(annotation)
        parts = []
        for m in self.members:
            if m is type(None):
                continue
            if isinstance(m, tuple):
                parts.append("|".join(map(str, m)))
            elif isinstance(m, list):
                parts.append(f"{m[0].__name__.upper()}S")
            else:
                parts.append({int: "INTEGER", float: "FLOAT", str: "TEXT"}.get(m, "TEXT"))
        if type(None) in self.members:
            parts.append("none")
        self.name = "|".join(parts) or "TEXT"

    @staticmethod
    def _members(annotation) -> list:
        """Flatten a union into int/float/str/None, tuples of literal choices, and ``[element type]``."""
        out: list = []
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            for a in typing.get_args(annotation):
                out += FieldType._members(a)
        elif origin is typing.Annotated:  # int with a range: pydantic checks the range
            out += FieldType._members(typing.get_args(annotation)[0])
        elif origin is typing.Literal:
            out.append(tuple(typing.get_args(annotation)))
        elif origin is list or annotation is list:
            args = typing.get_args(annotation)
            out.append([args[0] if args else str])
        else:
            out.append(annotation)
        return out

    def get_metavar(self, param, ctx=None):
        choices = [m for m in self.members if isinstance(m, tuple)]
        if len(self.members) == 1 and choices:
            return "[" + "|".join(map(str, choices[0])) + "]"
        return self.name

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        raw = value.strip()
        if raw.lower() in _NONE and type(None) in self.members:
            return None
        for m in self.members:  # literal choices first, so "auto" is not read as a string field
            if isinstance(m, tuple) and (c := _choice(m, raw)) is not _NO_CHOICE:
                return c
        for m in self.members:
            try:
                if m is int:
                    return int(raw)
                if m is float:
                    return float(raw)
                if m is bool and raw.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    return raw.lower() in ("true", "1", "yes", "on")
                if isinstance(m, list):
                    return self._list(m[0], raw, param, ctx)
            except ValueError:
                continue
        if str in self.members:
            return raw
        self.fail(f"{value!r} is not {self._expected()}", param, ctx)

    def _list(self, elem, raw: str, param, ctx) -> list:
        items = [x.strip() for x in raw.split(",") if x.strip()]
        if typing.get_origin(elem) is typing.Literal:  # e.g. steering.arms: each item one of the choices
            choices = typing.get_args(elem)
            picked = [_choice(choices, x) for x in items]
            for x, c in zip(items, picked):
                if c is _NO_CHOICE:
                    self.fail(f"{x!r} in {raw!r} is not one of {', '.join(repr(str(c)) for c in choices)}",
                              param, ctx)
            return picked
        return [elem(x) for x in items]

    def _expected(self) -> str:
        words = []
        for m in self.members:
            if isinstance(m, tuple):
                words.append("one of " + ", ".join(repr(str(c)) for c in m))
            elif isinstance(m, list):
                words.append(f"a comma-separated list of {getattr(m[0], '__name__', 'choice')}s")
            elif m is type(None):
                words.append("'none'")
            else:
                words.append({int: "an integer", float: "a number"}.get(m, str(m)))
        return " or ".join(words)


def _option(dotted: str, info, alias: str | None = None, default=None):
    """One typed click option for config field ``dotted``; booleans become ``--flag/--no-flag``.
    ``alias`` (``--name``) is a second spelling of the flag; ``default`` the command's own default."""
    default = info.default if default is None else default
    shown = "none" if default is None else default
    help_text = f"{info.description or ''} [config: {dotted}; default: {shown}]"
    dest = "cfg__" + dotted.replace(".", "__")
    names = [_flag(dotted)] + ([alias] if alias else [])
    if info.annotation is bool:
        return click.option(*[f"{n}/--no-{n[2:]}" for n in names], dest, default=None, help=help_text)
    return click.option(*names, dest, type=FieldType(info.annotation), default=None, help=help_text)


def config_options(cls=RunConfig, with_preset: bool = True, section_presets: dict | None = None, *,
                   aliases: dict[str, str] | None = None, exclude: tuple[str, ...] = (),
                   defaults: dict | None = None):
    """Add ``--config``, ``--preset`` and one typed flag per config field (help from its docstring).

    The wrapped command receives ``cfg`` (a validated ``cls``) instead of the raw flags; a bad value is
    one ``invalid config: field: why`` line (exit 2). ``section_presets`` (``{section: {preset:
    values}}``) are the artifact kinds' own presets. ``aliases`` (``{field: "--name"}``) keeps an older
    spelling of a field's flag working beside the generated one; ``exclude`` lists fields the command
    sets itself (no flag); ``defaults`` (``{field: value}``) are the command's own defaults, below a
    ``--config`` file and the flags (``cfg.model_fields_set`` then holds them, the file's and the flags').
    """

    aliases = aliases or {}
    defaults = defaults or {}
    fields = [(d, info) for d, info in leaf_fields(cls) if d not in exclude]
    unknown = (set(aliases) | set(defaults) | set(exclude)) - {d for d, _ in leaf_fields(cls)}
    if unknown:
        raise ValueError(f"config_options: {cls.__name__} has no field {', '.join(sorted(unknown))}")

    def decorator(fn):
        @functools.wraps(fn)
        def wrapper(*args, config_file=None, preset=None, **kwargs):
            overrides = {}
            for key in [k for k in kwargs if k.startswith("cfg__")]:
                value = kwargs.pop(key)
                if value is not None:
                    overrides[key[len("cfg__"):].replace("__", ".")] = value
            cfg = build_config(preset=preset, file=config_file, overrides=overrides, cls=cls,
                               section_presets=section_presets, base=defaults)
            return fn(*args, cfg=cfg, **kwargs)

        for dotted, info in reversed(fields):
            wrapper = _option(dotted, info, aliases.get(dotted), defaults.get(dotted))(wrapper)
        if with_preset:
            wrapper = click.option("--preset", default=None, help="Preset: quick (minutes on a laptop CPU) or default.")(wrapper)
        wrapper = click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                               help="YAML or TOML config file; flags override it.")(wrapper)
        return wrapper

    return decorator


def command_group(cli: click.Group, name: str, help: str) -> click.Group:
    """The command group ``stitchplug NAME``, made (with ``help``) by the first plugin that asks, so that
    several plugins add commands under one group (``stitchplug experiment init``, ``... steering-fit``)."""
    from .errors import PluginError

    group = cli.commands.get(name)
    if group is None:
        group = click.Group(name, help=help)
        cli.add_command(group)
    elif not isinstance(group, click.Group):
        raise PluginError(f"`stitchplug {name}` is already a command, not a group")
    return group


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
    from .progress import quiet_loaders

    quiet_loaders()  # the model loaders' bars: off when stderr is not a terminal
    interrupt.reset()  # one command, one Ctrl-C state (tests and notebooks call main() many times)
    interrupt.install()
    try:
        _add_core_commands()
        _add_plugin_commands()
        code = cli.main(args=argv, prog_name="stitchplug", standalone_mode=False)
        interrupt.check()  # one swallowed where it landed and never raised again
        if isinstance(code, int) and code:
            sys.exit(code)
    except StitchplugError as err:
        for line in str(err).splitlines() or [type(err).__name__]:
            click.echo(f"Error: {line}", err=True)
        sys.exit(err.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo("Interrupted; finished stages are kept and a re-run resumes.", err=True)
        sys.exit(130)
    except click.UsageError as err:  # one line, like every other error, with where to look
        where = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
        click.echo(f"Error: {err.format_message()}{where}", err=True)
        sys.exit(err.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except Exception as exc:  # the environment: permissions, read-only or full disks, paths that are files
        from .atomic import as_disk_error  # whatever library raised it (safetensors, h5py, torch, json)

        err = as_disk_error(exc) or (exc if isinstance(exc, OSError) else None)
        if err is None:
            raise
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        click.echo(f"Error: {err.strerror or type(err).__name__}{where}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
