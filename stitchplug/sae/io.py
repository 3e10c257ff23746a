"""SAE persistence in SAELens format (``cfg.json`` + ``sae_weights.safetensors``) plus a sidecar.

The sidecar ``stitchplug.json`` records provenance (source SAE, stitch, library versions); SAELens
ignores it, so the folder stays loadable with ``sae_lens.SAE.load_from_disk``.
"""

from __future__ import annotations

import json
from importlib import metadata as _md
from pathlib import Path
from typing import Any

from sae_lens import SAE

from ..errors import StageError, StitchplugError

SIDECAR = "stitchplug.json"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"


def versions() -> dict[str, str | None]:
    """Versions of the libraries whose conventions a saved SAE depends on."""
    out: dict[str, str | None] = {}
    for dist in ("stitchplug", "sae-lens", "torch", "transformer-lens"):
        try:
            out[dist] = _md.version(dist)
        except _md.PackageNotFoundError:
            out[dist] = None
    return out


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def save_sae(sae: SAE, folder: str | Path, sidecar: dict | None = None) -> Path:
    """Write ``sae`` in SAELens format into ``folder`` and the sidecar (with versions) next to it.

    An SAE trained by :mod:`stitchplug.sae.trainer` (or transferred from one: Eq. 6 keeps the
    metadata) gets its training FLOPs as ``source_sae_flops`` in the sidecar, which
    ``stitchplug experiment init`` reads for its "total including the source SAE" line."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sae.save_model(folder)
    info = {"format": "saelens", "architecture": sae.cfg.architecture(), "d_in": int(sae.cfg.d_in),
            "d_sae": int(sae.cfg.d_sae), "model_name": sae.cfg.metadata.get("model_name"),
            "hook_name": sae.cfg.metadata.get("hook_name"), "versions": versions()}
    training = sae.cfg.metadata.get("stitchplug_training") or {}
    if isinstance(training, dict) and isinstance(training.get("train_flops"), int):
        info["source_sae_flops"] = training["train_flops"]
    info.update(sidecar or {})
    (folder / SIDECAR).write_text(json.dumps(_jsonable(info), indent=2, sort_keys=True))
    return folder


def read_sidecar(folder: str | Path) -> dict:
    """The sidecar of a saved SAE, or ``{}`` for a plain SAELens folder."""
    path = Path(folder) / SIDECAR
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StageError(f"SAE sidecar {path} is not valid JSON: {exc}") from None


def load_sae_folder(folder: str | Path, device: str = "cpu") -> SAE:
    """``SAE.load_from_disk`` with one-line errors for missing or broken folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StageError(f"SAE folder not found: {folder}")
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (folder / name).exists():
            raise StageError(f"SAE folder {folder} has no {name} (expected SAELens format)")
    try:
        return SAE.load_from_disk(folder, device=device)
    except Exception as exc:  # sae-lens raises many kinds; the user needs one line
        first = (str(exc).splitlines() or [""])[0]
        raise StageError(f"cannot load SAE from {folder}: {type(exc).__name__}: {first}") from None


def load_sae(spec: str, device: str = "cpu") -> SAE:
    """Load a source SAE: a SAELens-format folder, or ``release:RELEASE/SAE_ID`` (also
    ``release:RELEASE:SAE_ID``) through ``SAE.from_pretrained`` when the hub is reachable."""
    if spec.startswith("release:"):
        rest = spec[len("release:"):]
        sep = ":" if ":" in rest else "/"
        release, _, sae_id = rest.partition(sep)
        if not release or not sae_id:
            raise StitchplugError(f"SAE spec {spec!r} must look like release:RELEASE/SAE_ID")
        try:
            return SAE.from_pretrained(release, sae_id, device=device)
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0][:300]
            raise StitchplugError(f"cannot load SAE {sae_id!r} of release {release!r} from the hub "
                                  f"(offline or unknown id?): {type(exc).__name__}: {first}") from None
    return load_sae_folder(spec, device=device)
