"""Benchmark: the project's TopK SAE trainer against the plain reference recipe at equal budget.

Both train on the SAME cached batches of model A's activations (the run folder's cache, the stitch's
source layer), for the same steps x batch tokens, width, k and lr; both are evaluated on the cache's
held-out documents. Prints ONE JSON line: held-out FVU (raw and excluding the massive dims), dead
latents (never firing on the held-out tokens), tokens/s of each, and the ratios project/reference.

    python bench/sae.py [--run runs/quick] [--steps 234] [--width 2304] [--k 32] [--lr 4e-4]
                        [--aux-k-coef 0] [--lr-width-ref N] [--normalize none|expected_norm]
                        [--clip-grad-norm G] [--no-reference] [--layer L]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def heldout_metrics(forward, codes, x_eval: torch.Tensor, massive: list[int], width: int) -> dict:
    from stitchplug.metrics import ReconAccumulator

    acc = ReconAccumulator(x_eval.shape[1], massive)
    fired = torch.zeros(width, dtype=torch.bool)
    with torch.no_grad():
        for i in range(0, len(x_eval), 4096):
            xb = x_eval[i:i + 4096]
            acc.update(xb, forward(xb))
            fired |= (codes(xb) != 0).any(0)
    r = acc.result()
    return {"fvu": round(r["fvu"], 4), "fvu_excl_massive": round(r["fvu_excl_massive"], 4),
            "dead_share": round(1 - float(fired.float().mean()), 4)}


def load_pair_data(run: Path, steps: int, batch: int, seed: int = 0, layer: int | None = None):
    """``(train batches, x_eval, massive dims, source layer)`` from a run folder's cache; the layer is
    the stitch's source layer unless given."""
    from stitchplug.cache.reader import open_cache
    from stitchplug.metrics import massive_dims

    cache_path = run / "cache.h5"
    meta_path = run / "stitch" / "stitch.safetensors.json"
    if not cache_path.exists() or (layer is None and not meta_path.exists()):
        raise SystemExit(f"error: {run} has no cache.h5 / stitch/stitch.safetensors.json (run `make demo` first)")
    lA = int(json.loads(meta_path.read_text())["source_layer"]) if layer is None else layer
    with open_cache(cache_path) as cache:
        it = cache.batches(keys=[("source", lA)], batch_size=batch, split="train", seed=seed, shuffle=True,
                           epochs=10_000, drop_last=True)
        train = [next(it)[0].float() for _ in range(steps)]
        x_eval = torch.from_numpy(cache.array("source", lA, split="eval")[:]).float()
    return train, x_eval, massive_dims(x_eval), lA


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/quick")
    p.add_argument("--layer", type=int, default=None, help="source layer [default: the stitch's]")
    p.add_argument("--steps", type=int, default=234)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--width", type=int, default=2304)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--aux-k-coef", type=float, default=0.0)
    p.add_argument("--dead-window", type=int, default=200)
    p.add_argument("--lr-width-ref", type=int, default=None)
    p.add_argument("--normalize", default="none", choices=["none", "expected_norm"])
    p.add_argument("--clip-grad-norm", type=float, default=None)
    p.add_argument("--no-reference", action="store_true", help="measure the project trainer only")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from sae_reference import reference_codes, reference_forward, train_reference
    from stitchplug_sae.trainer import train_topk_sae

    train, x_eval, massive, lA = load_pair_data(Path(args.run), args.steps, args.batch_size, layer=args.layer)
    d = x_eval.shape[1]
    tokens = args.steps * args.batch_size
    t0 = time.perf_counter()
    sae, summary = train_topk_sae(train, d, width=args.width, k=args.k, lr=args.lr, train_tokens=tokens,
                                  batch_size=args.batch_size, aux_k_coef=args.aux_k_coef, dead_window=args.dead_window,
                                  lr_width_ref=args.lr_width_ref, normalize=args.normalize, clip_grad_norm=args.clip_grad_norm,
                                  progress=False)
    t_proj = time.perf_counter() - t0
    out = {"bench": "sae", "run": args.run, "source_layer": lA, "d_in": d, "steps": args.steps,
           "batch_size": args.batch_size, "train_tokens": tokens, "width": args.width, "k": args.k, "lr": args.lr,
           "options": {"aux_k_coef": args.aux_k_coef, "dead_window": args.dead_window,
                       "lr_width_ref": args.lr_width_ref, "normalize": args.normalize,
                       "clip_grad_norm": args.clip_grad_norm},
           "n_eval_tokens": int(x_eval.shape[0]), "massive_dims": massive, "threads": torch.get_num_threads()}
    out["project"] = {**heldout_metrics(sae, sae.encode, x_eval, massive, args.width),
                      "tokens_per_s": round(tokens / t_proj, 1), "train_flops": summary["train_flops"]}
    if not args.no_reference:
        t0 = time.perf_counter()
        w = train_reference(train, d, args.width, args.k, lr=args.lr)
        t_ref = time.perf_counter() - t0
        out["reference"] = {**heldout_metrics(lambda x: reference_forward(x, *w, args.k),
                                              lambda x: reference_codes(x, *w, args.k), x_eval, massive, args.width),
                            "tokens_per_s": round(tokens / t_ref, 1)}
        pr, rf = out["project"], out["reference"]
        out["ratio"] = {"fvu": round(pr["fvu"] / rf["fvu"], 4),
                        "fvu_excl_massive": round(pr["fvu_excl_massive"] / rf["fvu_excl_massive"], 4),
                        "tokens_per_s": round(pr["tokens_per_s"] / rf["tokens_per_s"], 4)}
        out["meets_bar"] = (out["ratio"]["fvu"] <= 1.1 and out["ratio"]["fvu_excl_massive"] <= 1.1
                            and pr["dead_share"] <= rf["dead_share"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
