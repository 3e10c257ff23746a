"""Benchmark: the loss evaluations' shared forward prefix against one full pass per variant.

The SAE evaluators and the stitched-loss table score the same windows several times (clean, with a
reconstruction spliced in at layer L, zero-ablated at L). ``ModelAdapter.token_losses_many`` runs the
blocks before L once and CE as ``logsumexp - logit``; the plain reference here runs one full forward
per variant and a vocabulary-sized log-softmax (what ``token_losses`` did before). Both are timed in
this one process, alternating, on the same random token windows; prints ONE JSON line with the
seconds, their ratio and the largest per-token loss difference.

    python bench/loss.py [--models smollm2-135m:15,gemma-3-270m:9] [--batch 4] [--ctx 128] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def reference_losses(adapter, ids: torch.Tensor, patches) -> torch.Tensor:
    """One full forward with ``patches``, log-softmax over the vocabulary, the next token's -log p."""
    logits = adapter.logits(ids, patches).float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    return -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m:15,gemma-3-270m:9", help="name:layer, comma-separated")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    from stitchplug.adapter import load_model

    out = {"bench": "loss", "batch": args.batch, "ctx": args.ctx, "reps": args.reps,
           "threads": torch.get_num_threads(), "models": {}}
    for spec in args.models.split(","):
        name, layer = spec.rsplit(":", 1)
        layer = int(layer)
        a = load_model(name)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(100, 20_000, (args.batch, args.ctx), generator=g)
        ids[:, 0] = a.bos_id
        variants = {"clean": None, "spliced": {layer: lambda r: 0.9 * r}, "other": {layer: lambda r: 1.1 * r},
                    "zero_ablation": {layer: torch.zeros_like}}  # what one SAE evaluation scores
        t_ref = t_new = 0.0
        diff = 0.0
        for _ in range(args.reps):
            t = time.perf_counter()
            ref = {k: reference_losses(a, ids, p) for k, p in variants.items()}
            t_ref += time.perf_counter() - t
            t = time.perf_counter()
            new = a.token_losses_many(ids, variants)
            t_new += time.perf_counter() - t
            diff = max(diff, max(float((ref[k] - new[k]).abs().max()) for k in variants))
        out["models"][name] = {"layer": layer, "reference_seconds": round(t_ref, 2), "shared_prefix_seconds":
                               round(t_new, 2), "speedup": round(t_ref / t_new, 3), "max_abs_loss_diff": diff}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
