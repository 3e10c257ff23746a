"""The SAEs the probe arms read: source (A), transferred (B), random (B), native (B) and the two
controls of :mod:`~stitchplug_probe.controls` (``random_unit`` and ``shuffled``, on B).

The probe kind builds on the ``sae`` kind (``requires = ("sae",)``): the pipeline runs (or reuses,
e.g. after ``make demo`` in the same folder) the SAE kind's ``sae.source``, ``sae.transfer``,
``sae.baseline`` and, with ``native_sae`` on, ``sae.native`` stages (a native SAE trained on B with
the same trainer and the source SAE's budget), with the run's ``sae:`` section, and hands their SAEs
over in ``context.inputs["sae"]`` by role; their folders are ``artifacts/sae/<role>/``.
"""

from __future__ import annotations

from typing import Any, Callable

from stitchplug.api import StageError

ROLES = ("source", "transferred", "random", "native")


def same_function(sae, other, rtol: float = 1e-3) -> bool:
    """Whether two SAEs of one shape encode alike: canonical encoder weights and biases equal to
    ``rtol`` of their scale (a transferred SAE saved by another run or from another source fails)."""
    from stitchplug.api import canonical_weights

    if (int(sae.cfg.d_in), int(sae.cfg.d_sae)) != (int(other.cfg.d_in), int(other.cfg.d_sae)):
        return False
    a, b = canonical_weights(sae), canonical_weights(other)
    for key in ("W_enc", "b_e"):
        scale = float(b[key].abs().max()) or 1.0
        if float((a[key] - b[key]).abs().max()) > rtol * scale:
            return False
    return getattr(sae.cfg, "k", None) == getattr(other.cfg, "k", None)


def resolve(ctx_a, ctx_b, cfg, log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict]:
    """``({role: SAE}, {role: where it came from})`` for source, transferred, random, native and
    (``control_arms``) the two controls."""
    from stitchplug.api import transfer_sae

    ctx_a.need("folder", "stitch", who="the probe kind")
    given = ctx_a.inputs.get("sae") or {}
    want = ROLES if cfg.native_sae else ROLES[:3]
    missing = [r for r in want if given.get(r) is None]
    if missing:
        raise StageError(f"the probe kind needs the {', '.join(missing)} SAE(s) from the 'sae' kind, "
                         "but the run did not hand them over")
    folder = ctx_a.folder
    saes = {r: given[r] for r in want}
    origin = {r: str(folder.artifact("sae", r).relative_to(folder.root)) for r in want}
    fresh = transfer_sae(saes["source"], ctx_a.stitch, "up", check_model=False)
    if not same_function(saes["transferred"], fresh):
        origin["transferred_stale"] = (f"{origin['transferred']} is not Eq. 6 of the source SAE through this "
                                       "stitch; the probe uses Eq. 6 of the source SAE")
        log(f"  warning: {origin['transferred_stale']}")
        saes["transferred"], origin["transferred"] = fresh, "Eq. 6 now"
    for role in ("transferred", "random", "native"):
        if role in saes and int(saes[role].cfg.d_in) != int(ctx_b.adapter.d_model):
            raise StageError(f"the {role} SAE in the run folder reads d_in={saes[role].cfg.d_in}, "
                             f"but model B has d_model={ctx_b.adapter.d_model}")
    if "native" in saes:
        trainers = {r: (saes[r].cfg.metadata.get("stitchplug_training") or {}).get("trainer") for r in ("source", "native")}
        if trainers["source"] != trainers["native"]:
            origin["warning"] = (f"the source SAE was trained by {trainers['source'] or 'an older trainer'}, the native "
                                 f"SAE by {trainers['native']}: the native arm is not at equal footing")
            log(f"  warning: {origin['warning']}")
    if getattr(cfg, "control_arms", False):
        add_controls(saes, origin, seed=ctx_a.seed)
    return saes, origin


RANDOM_UNIT_SEED_OFFSET = 1
"""``random_unit`` draws its directions from ``seed + 1``: the SAE run's random SAE (``random_B``)
already reads random unit directions drawn from ``seed`` (:func:`stitchplug.api.random_sae_like`:
decoder rows ``s_i u_i``, TopK ranking ``<x - b_dec, u_i>``), so a control from the same seed encodes
exactly as ``random_B`` does (measured: codes equal to 2e-6, and equal 30-task accuracies). The
second draw measures how much "random" moves between draws."""


def add_controls(saes: dict, origin: dict, seed: int = 0) -> None:
    """Add ``random_unit`` (width and k of the native SAE, else the transferred one; reading ``x``
    minus the random SAE's ``b_dec``, the mean of B's training activations; directions from ``seed +
    RANDOM_UNIT_SEED_OFFSET``, a draw independent of ``random_B``'s) and ``shuffled`` (the native
    SAE's latents shuffled; only with a TopK native SAE)."""
    from .controls import random_unit_sae, shuffled_sae

    like = saes["native"] if saes.get("native") is not None else saes["transferred"]
    mean = saes["random"].b_dec if saes.get("random") is not None else like.b_dec
    saes["random_unit"] = random_unit_sae(int(like.cfg.d_in), int(like.cfg.d_sae), int(getattr(like.cfg, "k", 32)),
                                          mean, seed=seed + RANDOM_UNIT_SEED_OFFSET, like=like)
    origin["random_unit"] = (f"random unit encoder rows (seed {seed + RANDOM_UNIT_SEED_OFFSET}, a draw independent of "
                             f"the random SAE's), width/k of the {'native' if like is saes.get('native') else 'transferred'} SAE")
    nat = saes.get("native")
    if nat is not None and nat.cfg.architecture() == "topk":
        saes["shuffled"] = shuffled_sae(nat, seed=seed)
        origin["shuffled"] = f"native SAE, each latent's weights permuted across input dims (seed {seed})"
