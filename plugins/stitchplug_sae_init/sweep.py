"""The init experiment over widths x token budgets x warm starts, resumable: ``stitchplug experiment init-sweep``.

Per width: the source SAE is trained on A on the run folder's cache (single epoch by default; its
FLOPs reported, not charged, as in the paper), transferred through the run's stitch (Eq. 6), then the
scratch arm and one arm per warm start (:data:`stitchplug.api.WARM_STARTS`) train on B with the
same data order. Every finished piece is written atomically under ``RUN/init_sweep/w<width>/``, so a
killed sweep resumes without redoing finished pieces; a piece written with other settings is refused,
naming the setting, never mixed in. The pieces that do not read the stitch (``source_sae/`` +
``source.json``, ``scratch.json``) sit in the width's folder; the transferred SAE and the warm-start
arms sit in ``stitch_<digest>/`` beside them, one per stitch file, so a sweep with another stitch in
the same folder trains only its warm-start arms.

Budgets: every arm trains once, to the largest budget, with a constant lr. Adam's state after ``s``
steps depends only on the first ``s`` batches, and the data order of a smaller budget is the prefix of
the larger one's, so a constant-lr run's prefix IS the shorter run: the crossings at a smaller budget
are read from the curve truncated there (an evaluation is forced at every budget's last step). The one
thing this does not cover is a recipe with an lr schedule (none here).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterator

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from stitchplug.api import RunFolder, StageError, massive_dims, write_json_atomic

from . import scaling
from .experiment import (METRICS, InitExperimentConfig, crossings, scratch_init, stitched_init, step_costs,
                         train_arm)
from .ledger import ArmLedger

SWEEP_DIR = "init_sweep"


class SweepConfig(BaseModel):
    """Settings of one sweep (the arms' settings are :class:`InitExperimentConfig`'s)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    widths: list[int] = [2304, 4608, 9216, 18432]
    """SAE widths (latents); each trains its own source SAE on A."""
    budgets: list[int] = [500_000, 1_800_000]
    """Token budgets per arm; the largest is trained, smaller ones are read from its prefix."""
    warm_starts: list[str] = ["fold", "rescale"]
    """Warm-start arms trained beside scratch."""
    k: int = Field(64, ge=1)
    """TopK k of the source SAE (and so of every arm)."""
    epochs: int = Field(1, ge=1)
    """Passes over the cached training tokens allowed (1: each token read at most once)."""

    @field_validator("widths", "budgets")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(x < 1 for x in v):
            raise ValueError("must be a non-empty list of positive integers")
        return sorted(set(v))

    @field_validator("warm_starts")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from stitchplug.api import WARM_STARTS

        bad = [w for w in v if w not in WARM_STARTS]
        if not v or bad:
            raise ValueError(f"warm starts must be among {', '.join(WARM_STARTS)} (got {', '.join(bad) or 'none'})")
        return list(dict.fromkeys(v))


def _key(width: int, sweep: SweepConfig, cfg: InitExperimentConfig, extra: dict) -> dict:
    """Everything a finished piece depends on (compared on resume). ``warm_start`` is not: each arm
    of a sweep is named by its own warm start, so the config's default is never used here."""
    arm_cfg = cfg.model_dump(exclude={"thresholds", "ma_window", "source_sae_flops", "eval_batch", "warm_start"})
    return {"width": width, "k": sweep.k, "epochs": sweep.epochs, **arm_cfg, **extra}


SOURCE_KEY = ("width", "k", "epochs", "steps", "lr", "batch_size", "aux_k_coef", "decode", "seed", "cache_tokens",
              "source_layer")
"""The settings the source SAE on A is trained with (the arguments of its ``train_topk_sae`` call and
its data stream): a source piece is reused across every other setting, which only the arms on B use
(resampling, evaluation cadence, ``b_dec`` handling, the recipe's label, the stitch)."""


def _source_key(key: dict) -> dict:
    return {k: key[k] for k in SOURCE_KEY if k in key}


def _check_key(path: Path, stored: dict, want: dict) -> None:
    diff = [f"{k} ({stored.get(k)!r} -> {v!r})" for k, v in want.items() if stored.get(k) != v]
    if diff:
        raise StageError(f"{path} was written with other settings: {', '.join(diff[:3])}; "
                         f"use another --sweep-dir or delete it")


def _load_piece(path: Path, want: dict) -> dict | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # written atomically: unreadable means never finished
    _check_key(path, data.get("key", {}), want)
    return data


def run_sweep(run: Path, sweep: SweepConfig, cfg: InitExperimentConfig, *, cache_path: Path, stitch_path: Path,
              eval_tokens: int = 8192, sweep_dir: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the sweep; returns the ``init_experiment`` result (also written to the run folder)."""
    from stitchplug.api import Stitch, content_fingerprint, hook_layer, open_cache, resid_hook
    from stitchplug.api import load_sae_folder, save_sae, train_topk_sae, transfer_sae

    from .weights import load_transferred_weights
    from .ledger import read_stitch_flops

    for p in (cache_path, stitch_path):
        if not p.exists():
            raise StageError(f"missing stage output: {p} (run `stitchplug run --artifact sae` first or pass its path)")
    stitch = Stitch.load(stitch_path)
    meta = dict(stitch.meta)
    s_flops = read_stitch_flops(stitch_path, meta)
    lA, lB = meta.get("source_layer"), meta.get("target_layer")
    if lA is None or lB is None:
        raise StageError(f"the stitch sidecar of {stitch_path} records no source_layer/target_layer")
    lA, lB = int(lA), int(lB)
    batch = cfg.batch_size
    max_steps = max(sweep.budgets) // batch
    if max_steps < 1:
        raise StageError(f"the largest budget ({max(sweep.budgets)} tokens) is smaller than one batch ({batch})")
    cfg = cfg.model_copy(update={"steps": max_steps, "epochs": sweep.epochs})
    budget_steps = {b: b // batch for b in sweep.budgets}
    root = sweep_dir or RunFolder(run).path(SWEEP_DIR)
    for leftover in root.rglob("*.tmp") if root.exists() else ():
        leftover.unlink(missing_ok=True)  # a kill -9 mid-write leaves one; its piece is redone below
    cache = open_cache(cache_path)
    try:
        n_train = int(len(cache.rows("train")))
        x_eval = torch.from_numpy(cache.array("target", lB, split="eval")[:eval_tokens]).float()
        if x_eval.shape[0] < 16:
            raise StageError(f"the cache's eval split has only {x_eval.shape[0]} target rows at layer {lB}")
        exclude = massive_dims(x_eval)
        extra = {"cache_tokens": int(cache.n_tokens), "source_layer": lA, "target_layer": lB,
                 "n_eval": int(x_eval.shape[0])}
        s_digest = content_fingerprint(stitch_path)[:12]  # names the folder of this stitch's pieces
        stitch_key = {"stitch_flops": int(s_flops), "stitch_digest": s_digest}

        def stream(side: str, layer: int) -> Callable[[], Iterator[torch.Tensor]]:
            def factory():
                for (xb,) in cache.batches(keys=[(side, layer)], batch_size=batch, split="train", seed=cfg.seed,
                                           shuffle=True, epochs=sweep.epochs, drop_last=True):
                    yield xb
            return factory

        widths = {}
        for width in sweep.widths:
            wdir = root / f"w{width}"
            key = _key(width, sweep, cfg, extra)
            src = _load_piece(wdir / "source.json", _source_key(key))
            if src is None:
                log(f"init sweep: width {width}: training the source SAE on A (layer {lA}, {max_steps} steps)")
                sae_a, summary = train_topk_sae(
                    stream("source", lA)(), int(cache.d_source), width=width, k=sweep.k, lr=cfg.lr,
                    train_tokens=max_steps * batch, batch_size=batch, aux_k_coef=cfg.aux_k_coef,
                    decode=cfg.decode, seed=cfg.seed, progress=False, model_name=meta.get("source_model"),
                    hook_name=resid_hook(lA))
                save_sae(sae_a, wdir / "source_sae")
                src = {"key": _source_key(key), "train_flops": summary["train_flops"], "steps": summary["steps"],
                       "tokens": summary["tokens"], "explained_variance_final": summary["explained_variance_final"]}
                write_json_atomic(wdir / "source.json", src)
            else:
                log(f"init sweep: width {width}: reusing the source SAE ({wdir / 'source.json'})")
            sdir = wdir / f"stitch_{s_digest}"
            transferred = sdir / "transferred_sae"
            if _load_piece(sdir / "transfer.json", stitch_key) is None:
                save_sae(transfer_sae(load_sae_folder(wdir / "source_sae"), stitch, "up"), transferred)
                write_json_atomic(sdir / "transfer.json", {"key": stitch_key, "stitch": str(stitch_path)})
            weights, side = load_transferred_weights(transferred)
            if hook_layer(side.get("hook_name")) not in (None, lB):
                raise StageError(f"{transferred} does not read target layer {lB}")
            d, k = int(weights["W_dec"].shape[1]), int(weights["k"])
            costs = step_costs(d, width, k, cfg)
            arms = {}
            for arm in ("scratch", *sweep.warm_starts):
                path, arm_key = (wdir / "scratch.json", key) if arm == "scratch" else (sdir / f"{arm}.json",
                                                                                     {**key, **stitch_key})
                done = _load_piece(path, arm_key)
                if done is not None:
                    log(f"init sweep: width {width}: reusing arm {arm}")
                    arms[arm] = done
                    continue
                log(f"init sweep: width {width}: training arm {arm} on B ({max_steps} steps)")
                factory = stream("target", lB)
                if arm == "scratch":
                    sae, init = scratch_init(d, width, k, cfg, factory), {}
                    offset = 0
                else:
                    sae, init = stitched_init(weights, arm, cfg, x_eval, exclude)
                    offset = int(s_flops)
                ledger = ArmLedger(costs["sae_step_flops_counted"], costs["aux_step_flops_counted"] or 0, offset)
                r = train_arm(sae, factory(), x_eval, cfg, ledger, exclude, eval_at=budget_steps.values())
                digests = r.pop("batch_digests")
                tokens = len(digests) * batch
                r.update({"key": arm_key, "init": init, "tokens": tokens, "passes": tokens / max(n_train, 1),
                          "single_epoch": sweep.epochs == 1,
                          "data_digest": hashlib.blake2b("".join(digests).encode(), digest_size=8).hexdigest()})
                write_json_atomic(path, r)
                arms[arm] = r
            if len({a["data_digest"] for a in arms.values()}) != 1:
                raise StageError(f"the arms of width {width} consumed different training batches")
            widths[width] = {"width": width, "k": k, "d": d, "ledger": {**costs, "stitch_flops": int(s_flops)},
                             "source_sae": src, "arms": arms}
    finally:
        cache.close()
    result = summarise(widths, sweep, cfg, budget_steps, exclude, n_train)
    result.update({"stitch_flops": int(s_flops), "n_eval_tokens": int(x_eval.shape[0]), "target_layer": lB,
                   "source_layer": lA, "cache": str(cache_path), "stitch": str(stitch_path), "sweep_dir": str(root)})
    return result


def summarise(widths: dict, sweep: SweepConfig, cfg: InitExperimentConfig, budget_steps: dict, exclude,
              n_train: int) -> dict:
    """Per budget and width: crossings per arm, savings of each warm start against scratch (stitch
    FLOPs included), the frontier fit per arm over widths; which arms were single-epoch."""
    per_budget: dict = {}
    for budget, steps in sorted(budget_steps.items()):
        rows: dict = {}
        curves: dict = {arm: [] for arm in ("scratch", *sweep.warm_starts)}
        for width, w in widths.items():
            cut = {arm: [p for p in a["curve"] if p["step"] <= steps] for arm, a in w["arms"].items()}
            reached = {arm: a["curve"][-1]["step"] >= steps for arm, a in w["arms"].items()}
            cross = {arm: crossings(c, cfg.thresholds, cfg.ma_window) for arm, c in cut.items()}
            scratch_budget = cut["scratch"][-1]["flops"]
            stitch = w["ledger"]["stitch_flops"]
            sav = {ws: {m: scaling.savings_table(cross["scratch"][m], cross[ws][m], cfg.thresholds, scratch_budget,
                                                 offset=stitch)
                        for m in METRICS} for ws in sweep.warm_starts}
            rows[str(width)] = {"budget_reached": reached, "crossings": cross, "savings": sav,
                                "final_ev": {arm: c[-1]["ev"] for arm, c in cut.items()}}
            for arm, c in cut.items():
                curves[arm].append(([p["flops"] for p in c], [p["fvu"] for p in c]))
        fits = {}
        for arm, cs in curves.items():
            grid, env = scaling.frontier(cs)
            fits[arm] = scaling.fit_power_law(grid, env)
        per_budget[str(budget)] = {"steps": steps, "widths": rows, "fits_fvu": fits}
    single = {f"{w}/{arm}": bool(a["single_epoch"]) for w, ww in widths.items() for arm, a in ww["arms"].items()}
    return {"kind": "init_sweep", "recipe": cfg.recipe, "config": {**cfg.model_dump(), **sweep.model_dump()},
            "massive_dims": list(exclude), "n_train_tokens": n_train, "single_epoch": single,
            "all_single_epoch": all(single.values()), "budgets": per_budget,
            "widths": {str(w): v for w, v in widths.items()}}
