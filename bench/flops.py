"""Benchmark: FLOPs savings of the transferred-SAE initialisation at explained-variance thresholds.

Prints ONE JSON line. Uses a default-pair run folder (``--run``, default ``runs/default``) when it has a
cache, stitch and transferred SAE; otherwise a synthetic stand-in (labelled ``"data": "synthetic ..."``):
sparse activations from a known dictionary, "transferred" init = that dictionary projected to a
lower rank (like rank <= dA), with noise and non-unit decoder norms, and a stitch cost counted as
one epoch of Eq. 3 Adam steps from d_A to d_B.

    python bench/flops.py [--run runs/default] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _summary(res: dict) -> dict:
    out = {}
    for width, w in res["widths"].items():
        out[width] = {
            "savings": {t: v["savings"] for t, v in w["savings"]["fvu"].items()},
            "savings_excl_massive": {t: v["savings"] for t, v in w["savings"]["fvu_excl_massive"].items()},
            "final_ev": {arm: round(1 - w["arms"][arm]["curve"][-1]["fvu"], 4) for arm in ("scratch", "stitched")},
            "init_ev": {arm: round(1 - w["arms"][arm]["curve"][0]["fvu"], 4) for arm in ("scratch", "stitched")},
            "step_flops_counted_over_analytic": w["ledger"]["counted_over_analytic"],
            "topk_selection_agreement_after_fold": round(w["init_renorm"]["topk_selection_agreement"], 4),
        }
    fits = {arm: {k: res["fits"]["fvu"][arm][k] for k in ("a", "beta", "r2")} for arm in ("scratch", "stitched")}
    return {"widths": out, "fit_fvu": fits, "stitch_flops": res["stitch_flops"], "steps": res["config"]["steps"],
            "batch_size": res["config"]["batch_size"]}


def synthetic(steps: int) -> dict:
    import torch

    from stitchplug.api import stitch_step_flops
    from stitchplug_sae_init.synthetic import make_synthetic, transferred_init
    from stitchplug_sae_init.experiment import InitExperimentConfig, run_init_experiment

    torch.set_num_threads(1)
    d, d_a, batch = 64, 48, 128
    data = make_synthetic(d=d, n_latents=256, k=6, n_train=40_000, n_eval=2_000, noise=0.05, offset_scale=1.0)
    base = transferred_init(data, k=6, rank=d_a, noise=0.3)
    weights = []
    for width in (128, 256):  # the sweep: the first `width` latents of the transferred dictionary
        weights.append({**base, "W_enc": base["W_enc"][:, :width], "b_enc": base["b_enc"][:width],
                        "W_dec": base["W_dec"][:width]})
    stitch_flops = stitch_step_flops(d_a, d, batch) * (data.train.shape[0] // batch)
    cfg = InitExperimentConfig(steps=steps, batch_size=batch, lr=3e-3, eval_every=20, ma_window=3,
                               scratch_b_dec="mean")
    res = run_init_experiment(data.batches(batch, epochs=100), data.eval, weights, stitch_flops, cfg)
    out = _summary(res)
    out["data"] = ("synthetic stand-in: no default-pair run folder; d_B=64, rank-48 transfer of a 256-atom "
                   "dictionary, k=6, lr 3e-3, scratch b_dec=mean")
    return out


def real(run: Path, steps: int, scratch_b_dec: str, lr: float) -> dict:
    import tempfile

    import click

    from stitchplug_sae_init.command import default_paths, run_on_folder
    from stitchplug_sae_init.experiment import InitExperimentConfig

    cfg = InitExperimentConfig(steps=steps, batch_size=1024, lr=lr, eval_every=max(steps // 40, 1),
                               scratch_b_dec=scratch_b_dec)
    scratch = Path(tempfile.mkdtemp(prefix="stitchplug-bench-flops-"))  # never touch the run folder's results
    cache, stitch, sae = default_paths(run)
    res = run_on_folder(scratch, cache, stitch, [sae], cfg, epochs=100, eval_tokens=8192,
                        log=lambda m: click.echo(m, err=True))
    out = _summary(res)
    out["data"] = (f"run folder {run} (target layer {res['target_layer']}), lr {lr}, scratch b_dec={scratch_b_dec}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/default")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=4e-4, help="constant SAE learning rate (real run folder)")
    ap.add_argument("--scratch-b-dec", choices=("zeros", "mean"), default="mean",
                    help="scratch arm's decoder bias init; 'zeros' is the SAELens default, 'mean' the fair "
                         "baseline on models with massive activations (the transferred b_dec is near the mean)")
    args = ap.parse_args()
    run = Path(args.run)
    t0 = time.time()
    from stitchplug_sae_init.command import default_paths

    have_run = all(p.exists() for p in default_paths(run))
    out = real(run, args.steps or 2000, args.scratch_b_dec, args.lr) if have_run else synthetic(args.steps or 1500)
    out["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps({"bench": "flops", **out}), file=sys.stdout)


if __name__ == "__main__":
    main()
