"""The SAEs the probe arms read: source (A), transferred (B), random (B), native (B) and the two
controls of :mod:`~stitchplug_probe.controls` (``random_unit`` and ``shuffled``, on B).

An SAE run in the same folder (``stitchplug run --artifact sae``, e.g. ``make demo``) is reused
(unless ``reuse_sae_run`` is off):
its source, transferred and random SAEs (``artifacts/sae/<role>/``, or the older
``artifact_source``/``artifact_target``/``artifact_random`` folders). Otherwise the source SAE is
trained on A with the project's TopK trainer and carried to B by Eq. 6. The native SAE on B is
trained with the same trainer and the source SAE's budget (width, k, lr, tokens, batch size, from
its training summary when it has one) and kept under ``artifacts/probe/native_sae``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from stitchplug.api import StageError

LEGACY = {"source": "artifact_source", "transferred": "artifact_target", "random": "artifact_random"}


def _find(folder, role: str) -> Path | None:
    for p in (folder.artifact("sae", role), folder.root / LEGACY[role]):
        if (p / "cfg.json").is_file():
            return p
    return None


def budget(sae, cfg) -> dict:
    """Training config for the native SAE: the source SAE's own (every trainer field its training
    summary records) when it has one, else the probe config's ``sae_*`` fields."""
    from stitchplug_sae.trainer import TrainerConfig

    base = {"width": cfg.sae_width, "k": cfg.sae_k, "lr": cfg.sae_lr, "train_tokens": cfg.sae_train_tokens,
            "batch_size": cfg.sae_batch_size}
    if sae is None:
        return base
    t = dict(sae.cfg.metadata.get("stitchplug_training") or {})
    out = {f: t[f] for f in TrainerConfig.model_fields if t.get(f) is not None}
    out.setdefault("train_tokens", t.get("tokens") or cfg.sae_train_tokens)
    out.setdefault("lr", cfg.sae_lr)
    out.setdefault("batch_size", cfg.sae_batch_size)
    out.update(width=int(sae.cfg.d_sae), k=int(getattr(sae.cfg, "k", t.get("k") or cfg.sae_k)))
    return out


def same_function(sae, other, rtol: float = 1e-3) -> bool:
    """Whether two SAEs of one shape encode alike: canonical encoder weights and biases equal to
    ``rtol`` of their scale (a transferred SAE saved by another run or from another source fails)."""
    from stitchplug_sae.transfer import canonical_weights

    if (int(sae.cfg.d_in), int(sae.cfg.d_sae)) != (int(other.cfg.d_in), int(other.cfg.d_sae)):
        return False
    a, b = canonical_weights(sae), canonical_weights(other)
    for key in ("W_enc", "b_e"):
        scale = float(b[key].abs().max()) or 1.0
        if float((a[key] - b[key]).abs().max()) > rtol * scale:
            return False
    return getattr(sae.cfg, "k", None) == getattr(other.cfg, "k", None)


def train_sae(ctx, b: dict):
    """Train with the project's one TopK trainer (:func:`stitchplug_sae.trainer.train_topk_sae`)."""
    from stitchplug_sae.trainer import train_topk_sae

    ctx.need("train_activations", "adapter", who="SAE training for the probe arms")
    batches = ctx.train_activations(batch_size=int(b["batch_size"]), seed=ctx.seed)
    sae, _ = train_topk_sae(batches, int(ctx.adapter.d_model), dict(b), seed=ctx.seed, device=ctx.device,
                            progress=ctx.progress, model_name=ctx.model_name or None, hook_name=ctx.hook_name)
    return sae


def resolve(ctx_a, ctx_b, stitch, cfg, log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict]:
    """``({role: SAE}, {role: where it came from})`` for source, transferred, random and native."""
    from stitchplug_sae.artifact import SAEArtifact
    from stitchplug_sae.io import load_sae_folder, save_sae
    from stitchplug_sae.transfer import check_compatible, transfer_sae

    folder = ctx_a.folder
    ctx_a.need("folder", who="the probe kind")
    kind = SAEArtifact()
    saes, origin = {}, {}
    src = _find(folder, "source") if cfg.reuse_sae_run else None
    own = folder.artifact("probe", "sae_source")
    if src is not None:
        saes["source"], origin["source"] = load_sae_folder(src), str(src.relative_to(folder.root))
    elif (own / "cfg.json").is_file():
        saes["source"], origin["source"] = load_sae_folder(own), str(own.relative_to(folder.root))
    else:
        log("  training the source SAE on A" + ("" if cfg.reuse_sae_run else " (reuse_sae_run is off)"))
        saes["source"] = train_sae(ctx_a, budget(None, cfg))
        save_sae(saes["source"], own, {"stage": "probe source SAE"})
        origin["source"] = str(own.relative_to(folder.root))
    check_compatible(saes["source"], stitch, "up", check_model=False)
    tr = _find(folder, "transferred") if src is not None else None
    if tr is not None:
        saes["transferred"], origin["transferred"] = load_sae_folder(tr), str(tr.relative_to(folder.root))
        fresh = transfer_sae(saes["source"], stitch, "up", check_model=False)
        if not same_function(saes["transferred"], fresh):
            origin["transferred_stale"] = (f"{origin['transferred']} is not Eq. 6 of the source SAE through this "
                                           "stitch; the probe uses Eq. 6 of the source SAE")
            log(f"  warning: {origin['transferred_stale']}")
            saes["transferred"], origin["transferred"] = fresh, "Eq. 6 now"
    else:
        saes["transferred"], origin["transferred"] = transfer_sae(saes["source"], stitch, "up", check_model=False), "Eq. 6 now"
    rnd = _find(folder, "random") if src is not None else None
    if rnd is not None:
        saes["random"], origin["random"] = load_sae_folder(rnd), str(rnd.relative_to(folder.root))
    else:
        saes["random"], origin["random"] = kind.baseline(saes["transferred"], ctx_b), "random_sae_like now"
    for role in ("transferred", "random"):
        if int(saes[role].cfg.d_in) != int(ctx_b.adapter.d_model):
            raise StageError(f"the {role} SAE in the run folder reads d_in={saes[role].cfg.d_in}, "
                             f"but model B has d_model={ctx_b.adapter.d_model}")
    if cfg.native_sae:
        nat = folder.artifact("probe", "native_sae")
        if (nat / "cfg.json").is_file():
            saes["native"] = load_sae_folder(nat)
        else:
            b = budget(saes["source"], cfg)
            log(f"  training the native SAE on B (width {b['width']}, k {b['k']}, {b['train_tokens']} tokens)")
            saes["native"] = train_sae(ctx_b, b)
            save_sae(saes["native"], nat, {"stage": "probe native SAE on B", "budget": b})
        origin["native"] = str(nat.relative_to(folder.root))
        trainers = {r: (saes[r].cfg.metadata.get("stitchplug_training") or {}).get("trainer") for r in ("source", "native")}
        if trainers["source"] != trainers["native"]:
            origin["warning"] = (f"the source SAE was trained by {trainers['source'] or 'an older trainer'}, the native "
                                 f"SAE by {trainers['native']}: the native arm is not at equal footing")
            log(f"  warning: {origin['warning']}")
    if getattr(cfg, "control_arms", False):
        add_controls(saes, origin, seed=ctx_a.seed)
    return saes, origin


def add_controls(saes: dict, origin: dict, seed: int = 0) -> None:
    """Add ``random_unit`` (width and k of the native SAE, else the transferred one; reading ``x``
    minus the random SAE's ``b_dec``, the mean of B's training activations) and ``shuffled`` (the
    native SAE's latents shuffled; only with a TopK native SAE)."""
    from .controls import random_unit_sae, shuffled_sae

    like = saes["native"] if saes.get("native") is not None else saes["transferred"]
    mean = saes["random"].b_dec if saes.get("random") is not None else like.b_dec
    saes["random_unit"] = random_unit_sae(int(like.cfg.d_in), int(like.cfg.d_sae), int(getattr(like.cfg, "k", 32)),
                                          mean, seed=seed, like=like)
    origin["random_unit"] = f"random unit encoder rows (seed {seed}), width/k of the {'native' if like is saes.get('native') else 'transferred'} SAE"
    nat = saes.get("native")
    if nat is not None and nat.cfg.architecture() == "topk":
        saes["shuffled"] = shuffled_sae(nat, seed=seed)
        origin["shuffled"] = f"native SAE, each latent's weights permuted across input dims (seed {seed})"
