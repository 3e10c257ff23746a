"""Run configuration: pydantic models whose attribute docstrings become ``--help`` text.

A config comes from (lowest to highest precedence) the field defaults, a ``--preset``, a YAML or
TOML file, and CLI flags. Invalid values raise :class:`ConfigError` with one line per bad field.
Every section derives from :class:`~stitchplug.schema.ConfigSection`, which holds every field to the
schema rules (:mod:`stitchplug.schema`).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from .errors import ConfigError
from .schema import (  # noqa: F401  (re-exported: the schema rules are importable from here)
    _BOUNDS, CONTEXT_LENGTH, OPT, ConfigSection, _extra, _numeric_members, _value_problem, allows, check_values,
    context_lengths, unbounded_fields, value_problems)

SVCCA_TOKENS = 4_000
"""Default tokens of the SVCCA layer choice (``stitch.svcca_tokens``; the cache probe and SVCCA on a
cache use the same default). On the default pair, 2,000, 4,000 and 10,000 all choose Gemma layer 9 at
the default preset's budget."""


_Section = ConfigSection


class ModelsConfig(_Section):
    source: str = "smollm2-135m"
    """Model A, the smaller model the artifact comes from (a registered model name)."""
    target: str = "gemma-3-270m"
    """Model B, the larger model the artifact is transferred to."""
    cache_dir: str | None = None
    """Where dequantised offline models are cached (default: $STITCHPLUG_CACHE or ~/.cache/stitchplug)."""


class CacheConfig(_Section):
    corpus: str = "wiki-en"
    """Registered corpus name (wiki-en, wiki-fr, wiki-es, file:PATH, hub:NAME), or a mix of them by share of
    characters: mix:wiki-en=0.6,wiki-fr=0.2,wiki-es=0.2."""
    doc_start: int = Field(0, ge=0)
    """First document of the corpus slice."""
    max_docs: int | None = Field(None, ge=1)
    """Number of documents in the slice (None: until `tokens` is reached)."""
    tokens: int = Field(200_000, ge=1)
    """Aligned token positions to cache (training plus held-out)."""
    context_size: int = Field(128, ge=2, json_schema_extra={CONTEXT_LENGTH: True})
    """Tokens per context window (counted on the source model); longer documents are split."""
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    """Share of documents held out for evaluation (split by document, deterministic)."""
    source_layers: list[int] | None = None
    """Source layers to cache (None: just the stitch's source layer)."""
    target_layers: list[int] | Literal["all"] | None = None
    """Target layers to cache. None: only the stitch's target layer (when 'auto', chosen first by SVCCA on a probe of stitch.svcca_tokens tokens over all layers); 'all': every layer."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Storage dtype; float16 refuses values beyond 65,504; bfloat16 keeps float32's range with 8 mantissa bits."""
    batch_size: int = Field(8, ge=1)
    """Context windows per forward pass while caching."""
    queue_depth: int = Field(2, ge=0)
    """Shards that may wait for the writer thread (and be windowed ahead) while the next shard's forwards run; 0: no overlap, all in one thread. Bounds host memory (about depth + 2 shards of activations); the bytes written do not depend on it, so it is not part of the cache's identity."""
    host_workers: int = Field(2, ge=1, le=64)
    """Threads that gather, pack (e.g. to bfloat16) and digest each shard's layers for the writer; 1: the writer thread alone. Only speed depends on it (the bytes written are the same), so it is not part of the cache's identity."""
    aligner: str = Field("auto", json_schema_extra={"added_later": True})
    """Token aligner between the two tokenizers: 'auto' (identity for one tokenizer, end-offsets otherwise) or a registered aligner name (`stitchplug plugins`); used for the cache and every held-out window."""


class StitchConfig(_Section):
    source_layer: int | None = Field(None, ge=0)
    """Layer lA of model A (None: the middle layer)."""
    target_layer: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    """Layer lB of model B, or 'auto' to take the argmax of mean SVCCA correlation with A at lA."""
    solver: Literal["lstsq", "adam", "lstsq+adam"] = "lstsq"
    """How to fit: closed-form least squares, the paper's Adam recipe, or Adam started from lstsq."""
    alpha: float = Field(1.0, ge=0.0)
    """Weight of the two round-trip terms in the loss (paper Eq. 3)."""
    lr: float = Field(1e-4, gt=0.0)
    """Adam learning rate (cosine decay)."""
    epochs: int = Field(2, ge=1)
    """Adam epochs over the cached training tokens."""
    batch_size: int = Field(5120, ge=1)
    """Tokens per Adam step."""
    ridge: float = Field(1e-6, ge=0.0)
    """Relative ridge term of the closed-form solver (times the mean diagonal of X^T X)."""
    fit_tokens: int | None = Field(None, ge=1, json_schema_extra={"added_later": True})
    """Fit on at most this many training tokens per pass (None: all): the first ``ceil(fit_tokens /
    batch_size)`` batches of a shuffled pass, i.e. randomly chosen 4,096-row chunks of the cache. The
    closed form's cost (its Gram products) grows with the tokens read; the L-BFGS refinement's does not."""
    refine_iters: int = Field(100, ge=0)
    """L-BFGS iterations on the exact Eq. 3 (round trips included) after the closed form; lstsq solvers
    only, beyond the paper (0: the closed form alone). On the quick cache they take the round trips' FVU
    from 0.82 to 0.015 (A->B->A) and 0.19 to 0.045 (B->A->B) at the same one-way FVU."""
    allow_tf32: bool = False
    """Adam solver on CUDA: let float32 matmuls use TF32 tensor cores (faster, 10-bit mantissa) while its steps run; a no-op on the CPU."""
    svcca_tokens: int = Field(SVCCA_TOKENS, ge=2)
    """Tokens used for SVCCA layer selection (on the default pair, 2,000, 4,000 and 10,000 all choose
    Gemma layer 9 at the default preset's budget)."""


class EvalConfig(_Section):
    docs: int = Field(64, ge=1)
    """Held-out documents (after the cached slice) for next-token-loss evaluations (stitched CE, Delta loss)."""
    max_windows: int = Field(96, ge=1)
    """At most this many context windows of those documents."""
    loss_batch_size: int = Field(4, ge=1)
    """Windows per forward pass in loss evaluations (a 262k-vocabulary model's logits are large)."""


class RunConfig(_Section):
    """A whole `stitchplug run`."""

    artifact: str = "sae"
    """Artifact kind to transfer (a registered artifact kind; `stitchplug plugins` lists them)."""
    output_dir: str = "runs/default"
    """Run folder; finished stages in it are reused."""
    seed: int = Field(0, ge=0)
    """Seed for data order, initialisation and sampling."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Device for models and training."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype of the models."""
    models: ModelsConfig = ModelsConfig()
    cache: CacheConfig = CacheConfig()
    stitch: StitchConfig = StitchConfig()
    eval: EvalConfig = EvalConfig()


CORE_SECTIONS = frozenset(RunConfig.model_fields)


PRESETS: dict[str, dict[str, Any]] = {  # core sections; artifact kinds bring their own (ArtifactKind.presets)
    "quick": {
        "cache": {"tokens": 24_000, "context_size": 128},
        "stitch": {"solver": "lstsq"},
        "eval": {"docs": 16, "max_windows": 16},
    },
    "default": {},
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[leaf] = value


def _field_path(cls: type[BaseModel] | None, loc: tuple) -> str:
    """The dotted field of an error's ``loc``, without the union members pydantic appends."""
    if cls is None:
        return ".".join(str(p) for p in loc)
    parts = []
    for p in loc:
        is_model = isinstance(cls, type) and issubclass(cls, BaseModel)
        fields = cls.model_fields if is_model else {}
        if p not in fields:
            if isinstance(p, int) and parts:  # an item of a list field
                parts[-1] += f"[{p}]"
                continue
            if is_model:  # an unknown key of a section
                parts.append(str(p))
            break  # else a union member's tag pydantic appends
        parts.append(str(p))
        cls = fields[p].annotation
    return ".".join(parts)


def format_validation_error(err: ValidationError, cls: type[BaseModel] | None = None) -> str:
    """One ``invalid config: field: why`` line per bad field (a union's alternatives joined by "or")."""
    lines: dict[str, list[str]] = {}
    for e in err.errors():
        where = _field_path(cls, e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if msg not in lines.setdefault(where, []):
            lines[where].append(msg)
    return "\n".join(f"invalid config: {where}: {' or '.join(msgs)}" for where, msgs in lines.items())


def read_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path} must end in .yaml, .yml, .toml or .json")
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"cannot parse config file {path}: {first}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def artifact_sections() -> tuple[dict[str, type[BaseModel]], dict[str, dict[str, dict]]]:
    """``({kind: config class}, {kind: presets})`` of every registered artifact kind that declares a
    ``config_class``. A kind that cannot be built, or whose name cannot be a section, is a warning."""
    from .artifacts import ArtifactKind
    from .plugins import WARNINGS, registry

    reg = registry()
    classes, presets = {}, {}
    for name in reg.names("artifacts"):
        entry = reg.get("artifacts", name)
        try:
            kind = entry.factory()
        except Exception as exc:  # one broken kind must not take `stitchplug run` down
            WARNINGS.append(f"artifact kind {name!r} of plugin {entry.plugin!r} cannot be built and is skipped: "
                            f"{type(exc).__name__}: {exc}")
            continue
        if not isinstance(kind, ArtifactKind):
            WARNINGS.append(f"artifact {name!r} of plugin {entry.plugin!r} is not a stitchplug.api.ArtifactKind "
                            "and is skipped")
            continue
        if kind.config_class is None:
            continue
        if not name.isidentifier() or name in CORE_SECTIONS:
            WARNINGS.append(f"artifact kind {name!r} of plugin {entry.plugin!r} declares a config but its name "
                            "cannot be a config section (a Python identifier, not a core section); config ignored")
            continue
        classes[name], presets[name] = kind.config_class, dict(kind.presets)
    return classes, presets


def run_config_class(sections: dict[str, type[BaseModel]] | None = None) -> type[RunConfig]:
    """:class:`RunConfig` plus one section per artifact kind config (default: every registered kind's)."""
    from pydantic import create_model

    if sections is None:
        sections = artifact_sections()[0]
    if not sections:
        return RunConfig
    fields = {name: (cls, Field(default_factory=cls, description=(cls.__doc__ or "").strip() or None))
              for name, cls in sections.items()}
    return create_model("RunConfig", __base__=RunConfig, **fields)


def build_config(preset: str | None = None, file: str | Path | None = None,
                 overrides: dict[str, Any] | None = None, cls: type[BaseModel] = RunConfig,
                 section_presets: dict[str, dict[str, dict]] | None = None, base: dict | None = None) -> BaseModel:
    """Layer defaults < ``base`` < preset < file < overrides (dotted keys such as ``stitch.solver``).

    ``section_presets`` (``{section: {preset: values}}``) adds the artifact kinds' own presets;
    ``base`` (dotted keys) is a command's own defaults.
    """
    data: dict = {}
    for dotted, value in (base or {}).items():
        _set(data, dotted, value)
    if preset is not None:
        known = set(PRESETS) | {p for ps in (section_presets or {}).values() for p in ps}
        if preset not in known:
            raise ConfigError(f"unknown preset {preset!r} (known: {', '.join(sorted(known))})")
        data = _merge(data, PRESETS.get(preset, {}))
        for section, ps in (section_presets or {}).items():
            if preset in ps and section in cls.model_fields:
                data = _merge(data, {section: ps[preset]})
    if file is not None:
        data = _merge(data, read_file(file))
    for dotted, value in (overrides or {}).items():
        _set(data, dotted, value)
    try:
        cfg = cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, cls)) from None
    check_values(cfg)  # the same rules for sections that do not derive from ConfigSection
    return cfg


def leaf_fields(cls: type[BaseModel], prefix: str = ""):
    """Yield ``(dotted_name, FieldInfo)`` for every non-section field, for building CLI flags."""
    for name, info in cls.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from leaf_fields(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def run_config_dict(cfg: RunConfig, sections: tuple[str, ...] = ()) -> dict:
    """The resolved run config as plain data: the core sections, the section of ``cfg.artifact`` and
    ``sections`` (the kinds it requires); other kinds' sections, all defaults, are left out."""
    data = cfg.model_dump(mode="json")
    return {k: v for k, v in data.items() if k in CORE_SECTIONS or k == cfg.artifact or k in sections}


def snapshot(cfg: BaseModel, path: str | Path, sections: tuple[str, ...] = ()) -> None:
    """Write the resolved config next to a run's outputs (YAML, atomically)."""
    from .atomic import write_text_atomic

    data = run_config_dict(cfg, sections) if isinstance(cfg, RunConfig) else cfg.model_dump(mode="json")
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))
