"""Validation generated from the schema: every field of every registered config (the core sections
and every artifact kind's section, found through the plugin registry) is walked with out-of-range,
non-finite, empty and wrong-type values; each is refused with exit 2, one ``Error:`` line, and no run
folder. Each numeric field must declare its range (or opt out in its declaration)."""

from __future__ import annotations

import math
import typing

import annotated_types as at
import pytest

from stitchplug.cli import main
from stitchplug.config import (ConfigSection, leaf_fields, run_config_class, unbounded_fields, value_problems)

TINY_PAIR = ["--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3"]


def _flag(dotted: str) -> str:
    return "--" + dotted.replace(".", "-").replace("_", "-")


def _members(ann) -> list:
    origin = typing.get_origin(ann)
    if origin in (typing.Union, type(int | None)):
        return [m for a in typing.get_args(ann) for m in _members(a)]
    if origin is typing.Annotated:
        base, *meta = typing.get_args(ann)
        return [(b, meta + [x for f in meta for x in getattr(f, "metadata", ())]) for b, _ in _members(base)]
    return [(ann, [])]


def bad_values(info) -> list[tuple[str, str]]:
    """``(value on the command line, what it breaks)`` for one field, from its declaration alone."""
    out = []
    members = _members(info.annotation)
    kinds = {m for m, _ in members}
    bounds = list(info.metadata) + [x for _, meta in members for x in meta]
    numbers = [m for m in kinds if m in (int, float)]
    lists = [m for m in kinds if typing.get_origin(m) is list]
    literals = [m for m in kinds if typing.get_origin(m) is typing.Literal]
    if bool in kinds:
        return []  # a --flag/--no-flag: no value to get wrong
    for b in bounds:
        for attr, below in (("ge", True), ("gt", True), ("le", False), ("lt", False)):
            v = getattr(b, attr, None)
            if isinstance(b, (at.Ge, at.Gt, at.Le, at.Lt)) and v is not None:
                step = 1 if int in numbers and float not in numbers else 0.5
                edge = v - step if attr == "ge" else v if attr in ("gt", "lt") else v + step
                out.append((str(edge), f"out of range ({attr} {v})"))
    if float in numbers:
        out += [("inf", "non-finite"), ("nan", "non-finite"), ("-inf", "non-finite")]
    if numbers and str not in kinds:
        out.append(("not-a-number", "wrong type"))
    if lists:
        out.append(("", "empty list"))
        if typing.get_args(lists[0]) and typing.get_args(lists[0])[0] in (int, float):
            out.append(("1,x", "wrong item type"))
    if literals and not numbers and not lists and str not in kinds:
        out.append(("no-such-choice", "not a choice"))
    if str in kinds:
        out.append(("", "empty string"))
    return out


FIELDS = list(leaf_fields(run_config_class()))
CASES = [(dotted, value, why) for dotted, info in FIELDS for value, why in bad_values(info)]


def test_every_registered_section_is_walked():
    sections = {d.split(".")[0] for d, _ in FIELDS}
    assert {"cache", "stitch", "eval", "models", "sae", "probe", "steering"} <= sections
    walked = {d for d, _, _ in CASES}
    no_case = [d for d, info in FIELDS if d not in walked and info.annotation is not bool]
    assert no_case == [], f"fields with no bad value to try: {no_case}"


def all_config_classes() -> list[type]:
    """Every pydantic model defined in the core or a first-party plugin (every module imported)."""
    import importlib
    import pkgutil

    from pydantic import BaseModel

    import stitchplug

    packages = [stitchplug] + [importlib.import_module(n) for n in (
        "stitchplug_sae", "stitchplug_probe", "stitchplug_steering", "stitchplug_sae_init", "stitchplug_analysis",
        "stitchplug_evals", "stitchplug_models", "stitchplug_corpora")]
    classes = {run_config_class()}
    for pkg in packages:
        names = [pkg.__name__] + [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
        for name in names:
            if name.endswith("__main__"):
                continue
            mod = importlib.import_module(name)
            classes |= {c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, BaseModel)
                        and c.__module__ == name}
    return sorted(classes, key=lambda c: f"{c.__module__}.{c.__name__}")


def test_every_number_declares_its_range():
    classes = all_config_classes()
    names = {c.__name__ for c in classes}
    assert {"RunConfig", "CacheCommandConfig", "TrainerConfig", "InitExperimentConfig", "SAEConfig",
            "ProbeConfig", "SteeringConfig"} <= names
    bad = {f"{c.__module__}.{c.__name__}": unbounded_fields(c) for c in classes}
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize("dotted,value,why", CASES, ids=[f"{d}={v!r}({w})" for d, v, w in CASES])
def test_bad_value_of_every_field_is_refused(dotted, value, why, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--output-dir", str(out), *TINY_PAIR, _flag(dotted), value]
    if dotted == "output_dir":
        args = ["run", *TINY_PAIR, "--output-dir", value]
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("Warning:")]
    assert exc.value.code == 2, (why, err)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in err, err
    assert not out.exists()


class _Free(ConfigSection):
    x: float = 1.0
    xs: list[int] = [1]


def test_config_section_rules_hold_for_python_construction_and_assignment():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="finite"):
        _Free(x=math.inf)
    with pytest.raises(ValidationError, match="empty"):
        _Free(xs=[])
    f = _Free()
    with pytest.raises(ValidationError, match="finite"):
        f.x = math.nan
    assert value_problems(f) == []
