"""The public API: everything a plugin author or a notebook user needs, from one module.

First-party plugins import the core only through this module (a test enforces it), so anything a
third-party plugin could need is here. Names are loaded lazily: importing ``stitchplug.api`` costs
nothing until a name is used.

Plugin authors: :data:`hookimpl`, :class:`ArtifactKind`, :class:`Evaluator`, :class:`Arm`,
:class:`ArtifactContext`, :class:`Example` (+ :func:`examples_from_documents`,
:func:`examples_from_file`), :class:`ModelAdapter`/:class:`TLAdapter`, :class:`RunFolder`, the
errors, the atomic writers, :func:`count_step_flops`, the reconstruction metrics.

Notebook users::

    from stitchplug.api import Stitch, load_model, transfer
    stitch = Stitch.load("runs/quick/stitch/stitch.safetensors")
    sae_b = transfer(sae_a, stitch)            # any SAELens SAE on A's stitch layer -> an SAE on B
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # plugin machinery
    "hookimpl": "stitchplug.hookspecs",
    "ArtifactKind": "stitchplug.artifacts",
    "Evaluator": "stitchplug.artifacts",
    "ArtifactContext": "stitchplug.artifacts",
    "Arm": "stitchplug.artifacts",
    "Example": "stitchplug.artifacts",
    "examples_from_documents": "stitchplug.examples",
    "examples_from_file": "stitchplug.examples",
    "registry": "stitchplug.plugins",
    "lazy_factory": "stitchplug.plugins",
    # models
    "ModelAdapter": "stitchplug.adapter",
    "TLAdapter": "stitchplug.adapter",
    "Encoded": "stitchplug.adapter",
    "load_model": "stitchplug.adapter",
    "resid_hook": "stitchplug.hooks",
    "hook_layer": "stitchplug.hooks",
    # data, stitch, run folder
    "open_cache": "stitchplug.cache.reader",
    "open_corpus": "stitchplug.cache.corpus",
    "parse_mix": "stitchplug.cache.corpus",
    "windows_for_texts": "stitchplug.stitch.stitched_ce",
    "heldout_documents": "stitchplug.cache.corpus",
    "Window": "stitchplug.cache.windows",
    "paired_windows": "stitchplug.cache.windows",
    "first_window": "stitchplug.cache.windows",
    "align_by_end_offsets": "stitchplug.cache.align",
    "align_identity": "stitchplug.cache.align",
    "heldout_texts": "stitchplug.stitch.api",
    "folded_unembed": "stitchplug.unembed",
    "Stitch": "stitchplug.stitch.model",
    "eq3_total": "stitchplug.stitch.model",
    "stitch_step_flops": "stitchplug.stitch.fit",
    "RunFolder": "stitchplug.runfolder",
    "fit_run_folder": "stitchplug.run.pipeline",
    "config_options": "stitchplug.cli",
    "command_group": "stitchplug.cli",
    "write_text_atomic": "stitchplug.atomic",
    "write_json_atomic": "stitchplug.atomic",
    "content_fingerprint": "stitchplug.fingerprints",
    "save_safetensors": "stitchplug.atomic",
    "disk_errors": "stitchplug.atomic",
    "lock_run_folder": "stitchplug.runfolder",
    # config sections
    "ConfigSection": "stitchplug.schema",
    "CONTEXT_LENGTH": "stitchplug.schema",
    "OPT": "stitchplug.schema",
    "progress": "stitchplug.progress",
    "progress_quiet_loaders": "stitchplug.progress",
    # SAEs: the one TopK trainer, its config, SAELens folders, Eq. 6
    "TrainerConfig": "stitchplug.sae.config",
    "TopKSAE": "stitchplug.sae.topk",
    "TopKTrainer": "stitchplug.sae.trainer",
    "train_topk_sae": "stitchplug.sae.trainer",
    "sae_step": "stitchplug.sae.trainer",
    "fold_decoder_norms": "stitchplug.sae.topk",
    "warm_start": "stitchplug.sae.topk",
    "WARM_STARTS": "stitchplug.sae.topk",
    "analytic_step_flops": "stitchplug.sae.step_flops",
    "measure_step_flops": "stitchplug.sae.step_flops",
    "save_sae": "stitchplug.sae.io",
    "load_sae": "stitchplug.sae.io",
    "load_sae_folder": "stitchplug.sae.io",
    "read_sidecar": "stitchplug.sae.io",
    "transfer_sae": "stitchplug.sae.transfer",
    "check_compatible": "stitchplug.sae.transfer",
    "canonical_weights": "stitchplug.sae.transfer",
    "random_sae_like": "stitchplug.sae.transfer",
    # the step across arms
    "bootstrap_mean": "stitchplug.arms",
    "relative_transfer_gap": "stitchplug.arms",
    # measurement
    "count_step_flops": "stitchplug.flops",
    "ReconAccumulator": "stitchplug.metrics",
    "massive_dims": "stitchplug.metrics",
    "tf32_loop": "stitchplug.precision",
    # errors
    "StitchplugError": "stitchplug.errors",
    "ConfigError": "stitchplug.errors",
    "PluginError": "stitchplug.errors",
    "ModelLoadError": "stitchplug.errors",
    "CacheError": "stitchplug.errors",
    "StageError": "stitchplug.errors",
}

_MODULES = {
    "dist": "stitchplug.dist",  # torch.distributed helpers (rank, world size, all-reduce) for torchrun
}

__all__ = sorted([*_EXPORTS, *_MODULES, "transfer", "artifact_kind"])


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
        globals()[name] = value
        return value
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stitchplug.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def artifact_kind(name: str):
    """The registered :class:`ArtifactKind` called ``name`` (e.g. ``"sae"``)."""
    from .run.pipeline import artifact_kind as _kind

    return _kind(name)


def transfer(artifact: Any, stitch: Any, kind: str | None = None, direction: str = "up", check: bool = True,
             **target: Any) -> Any:
    """Carry ``artifact`` through ``stitch`` with its kind's transfer (``"up"``: A -> B, ``"down"``).

    ``kind`` defaults to ``"sae"`` for SAELens SAEs; give it for other artifacts. ``check`` runs the
    kind's compatibility check first (widths, models, layers). ``stitch`` may be a
    :class:`Stitch` or a path to its safetensors file.
    """
    from pathlib import Path

    from .errors import StageError
    from .stitch.model import Stitch

    if isinstance(stitch, (str, Path)):
        stitch = Stitch.load(stitch)
    if kind is None:
        try:
            from sae_lens import SAE
        except ImportError:  # pragma: no cover
            SAE = ()
        if not isinstance(artifact, SAE):
            raise StageError(f"cannot tell the artifact kind of a {type(artifact).__name__}; pass kind=")
        kind = "sae"
    k = artifact_kind(kind)
    if check:
        k.check(artifact, stitch, direction)
    return k.transfer(artifact, stitch, direction, **target)
