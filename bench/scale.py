"""Benchmark: cache throughput with 1 rank vs N ranks under torchrun; prints ONE JSON line.

Both runs build the same cache (after an untimed warm-up cache of 1/8 the tokens) (same config, so the same shards; bit-identical by construction, see
tests/test_dist.py) from a fresh folder, with the machine's CPU threads split evenly over the ranks
(``torch.set_num_threads(cores // ranks)``), ``gloo`` on CPU or ``nccl`` with ``--device cuda``
(one GPU per rank). Only ``build_cache`` is timed (between two barriers, after the models are
loaded); the ratio ``ranks_vs_one = t_1 / t_N`` is measured in this run.

On a 2-core machine shared with other jobs the ratio says little (both ranks share the cores that
one rank would use, and every rank windows every document); record it anyway.

Usage: ``python bench/scale.py [--ranks 2] [--tokens 4000] [--source smollm2-135m] [--target gemma-3-270m]
[--target-layer 9] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args) -> None:
    import torch

    from stitchplug import dist
    from stitchplug.adapter import load_model
    from stitchplug.cache.writer import build_cache

    rank, world = dist.init_from_env(args.device)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    source, target = load_model(args.source, device=args.device), load_model(args.target, device=args.device)
    la = source.n_layers // 2
    kw = dict(context_size=128, source_layers=[la], target_layers=[args.target_layer], batch_size=args.batch_size,
              progress=False, log=lambda m: None)
    # warm-up (corpus open, tokenizer fingerprints, first forwards) on a small cache, untimed
    build_cache(Path(args.out) / "warm.h5", source, target, tokens=max(1, args.tokens // 8), **kw)
    dist.barrier()
    t = time.perf_counter()
    build_cache(Path(args.out) / "c.h5", source, target, tokens=args.tokens, **kw)
    dist.barrier()
    seconds = time.perf_counter() - t
    if rank == 0:
        (Path(args.out) / "seconds.json").write_text(json.dumps({"seconds": seconds, "world": world}))
    dist.shutdown()


def launch(args, ranks: int, out: Path) -> dict:
    me = [str(Path(__file__).resolve()), "--worker", "--out", str(out), "--tokens", str(args.tokens),
          "--source", args.source, "--target", args.target, "--target-layer", str(args.target_layer),
          "--device", args.device, "--batch-size", str(args.batch_size)]
    cmd = [sys.executable, *me] if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), *me]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{ranks}-rank run failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    return json.loads((out / "seconds.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--source", default="smollm2-135m")
    ap.add_argument("--target", default="gemma-3-270m")
    ap.add_argument("--target-layer", type=int, default=9)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    work = Path(tempfile.mkdtemp(prefix="stitchplug-scale-"))
    try:
        one = launch(args, 1, work / "one")
        many = launch(args, args.ranks, work / "many")
        print(json.dumps({"bench": "scale", "source": args.source, "target": args.target, "tokens": args.tokens,
                          "target_layer": args.target_layer, "device": args.device, "cpu_count": os.cpu_count(),
                          "ranks": args.ranks, "seconds_1_rank": one["seconds"], "seconds_n_ranks": many["seconds"],
                          "tokens_per_s_1_rank": args.tokens / one["seconds"],
                          "tokens_per_s_n_ranks": args.tokens / many["seconds"],
                          "ranks_vs_one": one["seconds"] / many["seconds"]}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
