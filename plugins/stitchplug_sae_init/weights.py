"""Reading a transferred (or any SAELens-format TopK) SAE folder as plain weights for the init experiment."""

from __future__ import annotations

from pathlib import Path

from stitchplug.api import StageError


def load_transferred_weights(folder: str | Path) -> tuple[dict, dict]:
    """``({W_enc, b_enc, W_dec, b_dec, k}, sidecar)`` of a SAELens-format TopK SAE folder, with the
    encoder bias made input-bias-free (so ``apply_b_dec_to_input`` is already folded in)."""
    from stitchplug.api import canonical_weights, load_sae_folder, read_sidecar

    sae = load_sae_folder(folder)
    k = getattr(sae.cfg, "k", None)
    if k is None:
        raise StageError(f"SAE in {folder} is a {sae.cfg.architecture()} SAE; the init experiment trains TopK SAEs")
    w = canonical_weights(sae)
    weights = {"W_enc": w["W_enc"].float(), "b_enc": w["b_e"].float(), "W_dec": w["W_dec"].float(),
               "b_dec": w["b_dec"].float(), "k": int(k)}
    side = read_sidecar(folder)
    side.setdefault("hook_name", sae.cfg.metadata.get("hook_name"))
    return weights, side
