"""The rules every config field follows, generated from its declaration, and :class:`ConfigSection`,
the base of every config section (core and plugins) that checks them.

A field may opt out of one rule in its declaration: ``Field(..., json_schema_extra={OPT: [...]})``
with ``"nonfinite"`` (a float that may be inf/nan), ``"empty"`` (a list or str that may be empty) or
``"unbounded"`` (a number without a declared range). ``{CONTEXT_LENGTH: True}`` marks a length in
tokens that preflight checks against the loaded models' context sizes (n_ctx).
"""

from __future__ import annotations

import math
import typing
from typing import Annotated, Any

import annotated_types
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from .errors import ConfigError

OPT = "stitchplug_allow"
CONTEXT_LENGTH = "stitchplug_context_length"
_BOUNDS = (annotated_types.Ge, annotated_types.Gt, annotated_types.Le, annotated_types.Lt, annotated_types.Interval)


def _extra(info) -> dict:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def allows(info, rule: str) -> bool:
    """Whether field ``info`` opted out of ``rule`` (``nonfinite``, ``empty`` or ``unbounded``)."""
    return rule in (_extra(info).get(OPT) or ())


def _value_problem(value: Any, info) -> str | None:
    if isinstance(value, float) and not math.isfinite(value) and not allows(info, "nonfinite"):
        return f"must be a finite number, not {value}"
    if isinstance(value, (list, tuple)):
        if not value and not allows(info, "empty"):
            return "must not be empty"
        bad = [v for v in value if isinstance(v, float) and not math.isfinite(v)]
        if bad and not allows(info, "nonfinite"):
            return f"must hold finite numbers, not {bad[0]}"
    if isinstance(value, str) and not value.strip() and not allows(info, "empty"):
        return "must not be empty"
    return None


def value_problems(model: BaseModel, prefix: str = "") -> list[str]:
    """``"dotted.field: problem"`` for every value of ``model`` (and its nested sections) that breaks a
    rule no field declares away: non-finite floats, empty lists and empty strings."""
    out = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name, None)
        if isinstance(value, BaseModel):
            out += value_problems(value, f"{prefix}{name}.")
        elif (why := _value_problem(value, info)) is not None:
            out.append(f"{prefix}{name}: {why}")
    return out


def check_values(model: BaseModel) -> None:
    """Refuse ``model`` (one ``invalid config:`` line per bad field, exit 2) if :func:`value_problems` finds any."""
    bad = value_problems(model)
    if bad:
        raise ConfigError("\n".join(f"invalid config: {b}" for b in bad))


def _numeric_members(annotation) -> list:
    """The int/float members of a (union) annotation, each with the range metadata it carries."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, type(int | None)):
        return [m for a in typing.get_args(annotation) for m in _numeric_members(a)]
    if origin is Annotated:
        base, *meta = typing.get_args(annotation)
        return [(b, m + [x for x in meta if isinstance(x, _BOUNDS)]
                 + [x for f in meta for x in getattr(f, "metadata", ()) if isinstance(x, _BOUNDS)])
                for b, m in _numeric_members(base)]
    return [(annotation, [])] if annotation in (int, float) else []


def unbounded_fields(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Numeric fields of ``cls`` (and its sections) that declare no range and did not opt out: the
    schema rule "every number has bounds" (tests/test_schema.py holds every registered config to it)."""
    out = []
    for name, info in cls.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += unbounded_fields(ann, f"{prefix}{name}.")
        elif not allows(info, "unbounded") and not any(isinstance(m, _BOUNDS) for m in info.metadata) \
                and any(not meta for _, meta in _numeric_members(ann)):
            out.append(f"{prefix}{name}")
    return out


def context_lengths(model: BaseModel, prefix: str = "") -> dict[str, int]:
    """``{dotted field: value}`` of every field marked ``CONTEXT_LENGTH`` that is set (not None)."""
    out = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name, None)
        if isinstance(value, BaseModel):
            out |= context_lengths(value, f"{prefix}{name}.")
        elif _extra(info).get(CONTEXT_LENGTH) and isinstance(value, int):
            out[f"{prefix}{name}"] = value
    return out


class ConfigSection(BaseModel):
    """Base of every config section (core and plugins): unknown keys refused, attribute docstrings as
    ``--help`` text, and the rules of :func:`value_problems` (no inf/nan, no empty list or string unless
    a field opts out) checked on construction and on assignment."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    @field_validator("*", mode="after")
    @classmethod
    def _schema_rules(cls, value, info: ValidationInfo):
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        if field is not None and (why := _value_problem(value, field)) is not None:
            raise ValueError(why)
        return value
