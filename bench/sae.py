"""Benchmark: the project's TopK SAE trainer against the plain reference recipe at equal budget.

Both train on the SAME cached batches of model A's activations (the run folder's cache, the stitch's
source layer), for the same steps x batch tokens, width, k and lr; both are evaluated on the cache's
held-out documents. Prints ONE JSON line: held-out FVU (raw and excluding the massive dims), dead
latents (never firing on the held-out tokens), tokens/s of each, and the ratios project/reference.

    python bench/sae.py [--run runs/quick] [--steps 234] [--width 2304] [--k 32] [--lr 4e-4]
                        [--aux-k-coef 0] [--lr-width-ref N] [--normalize none|expected_norm]
                        [--clip-grad-norm G] [--no-reference] [--layer L]

Sparse against dense step (issue 22), ONE JSON line: seconds per step of the k-row step
(``decode="sparse"``) over today's dense step at each width, trained from the same init on the same
batches for the same steps, and the held-out FVU difference at equal steps (float noise only):

    python bench/sae.py --decode-bench [--widths 2304,18432] [--steps 8] [--k 64] [--run RUN]

With ``--run`` the batches are the run's cached activations (the stitch's source layer), otherwise
seeded random rows of width ``--d`` (640, Gemma-3-270M's). Both steps are charged the same dense FLOPs.
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


def decode_bench(args) -> dict:
    """Time the dense and the sparse step at each width on the same batches; compare held-out FVU."""
    from stitchplug.metrics import massive_dims
    from stitchplug.sae.trainer import TopKSAE, TopKTrainer

    torch.set_num_threads(args.threads)
    steps, batch = args.steps, args.batch_size
    if args.run:
        train, x_eval, massive, _ = load_pair_data(Path(args.run), steps + 2, batch, layer=args.layer)
    else:
        g = torch.Generator().manual_seed(0)
        basis = torch.randn(4 * args.d, args.d, generator=g) / args.d ** 0.5
        draw = lambda n: torch.relu(torch.randn(n, 4 * args.d, generator=g) - 1.5) @ basis  # noqa: E731
        train, x_eval = [draw(batch) for _ in range(steps + 2)], draw(4096)
        massive = massive_dims(x_eval)
    d = x_eval.shape[1]
    out = {"bench": "sae_decode", "data": args.run or "random", "d_in": d, "k": args.k, "batch_size": batch,
           "steps_timed": steps, "threads": torch.get_num_threads(), "flops_charged": "dense (paper App. D)", "widths": {}}
    for width in args.widths:
        res = {}
        for decode in ("dense", "sparse"):
            sae = TopKSAE.random(d, width, args.k, generator=torch.Generator().manual_seed(1),
                                 b_dec=torch.cat(train).mean(0), apply_b_dec_to_input=True)
            tr = TopKTrainer(sae, args.lr, decode=decode)
            for xb in train[:2]:  # warm-up, not timed
                tr.step(xb)
            t0 = time.perf_counter()
            for xb in train[2:]:
                tr.step(xb)
            sec = (time.perf_counter() - t0) / steps
            res[decode] = {"s_per_step": round(sec, 4), "flops_per_step": tr.step_flops[False],
                           **heldout_metrics(lambda x: sae(x)[0], lambda x: sae(x)[1], x_eval, massive, width)}
        out["widths"][str(width)] = {
            **res, "dense_over_sparse_s_per_step": round(res["dense"]["s_per_step"] / res["sparse"]["s_per_step"], 3),
            "fvu_diff": round(res["sparse"]["fvu"] - res["dense"]["fvu"], 6)}
    top = out["widths"][str(max(args.widths))]
    out["ratio_at_largest_width"] = top["dense_over_sparse_s_per_step"]
    out["meets_goal_2x"] = top["dense_over_sparse_s_per_step"] >= 2.0 and abs(top["fvu_diff"]) < 1e-3
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decode-bench", action="store_true", help="time the sparse against the dense step (issue 22)")
    p.add_argument("--widths", type=lambda v: [int(x) for x in v.split(",")], default=[2304, 18432])
    p.add_argument("--d", type=int, default=640, help="input width of the random rows (--decode-bench without --run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--run", default=None, help="run folder [default: runs/quick; --decode-bench: random data]")
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
    if args.decode_bench:
        if args.steps == 234:  # the reference bench's default; a timing needs only a few steps
            args.steps = 8
        if args.k == 32:
            args.k = 64  # the paper's k
        print(json.dumps(decode_bench(args)))
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from sae_reference import reference_codes, reference_forward, train_reference
    from stitchplug.sae.trainer import train_topk_sae

    args.run = args.run or "runs/quick"
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
