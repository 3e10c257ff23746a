"""Benchmark of the paired activation cache; prints ONE JSON line with ratios measured in this run.

1. ``cache_vs_bare_forward``: caching throughput (tokenise, window, align, forward, write HDF5) over a
   bare ``stop_at_layer`` forward of both models on the same windows and batches (target >= 0.85).
2. ``single_vs_saelens``: one model and hook (source model at its cached layer) through
   ``build_cache`` on the pair (model, model) -- which runs the model TWICE and writes two copies,
   so this ratio is conservative -- over sae-lens's ``CacheActivationsRunner`` on the same model,
   hook and number of tokens (``buffer_size_gb`` 0.02, no wandb). ``single_vs_saelens_per_pass``
   halves our time (one of the two identical passes).
3. ``shuffled_read_vs_memmap``: ``PairedCache.batches(shuffle=True)`` over all cached layers versus
   reading the same bytes sequentially from ``numpy.memmap`` files (target >= 0.5).

Usage: ``python bench/cache.py [--tokens 8000] [--source smollm2-135m] [--target gemma-3-270m]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def plan_windows(source, target, tokens: int, context_size: int) -> list:
    """The windows ``build_cache`` will process for ``tokens`` aligned tokens of wiki-en (whole documents)."""
    from stitchplug.cache.corpus import open_corpus
    from stitchplug.cache.windows import paired_windows

    wins, aligned = [], 0
    for doc in open_corpus("wiki-en"):
        ws = paired_windows(doc["text"], source, target, context_size)
        wins += ws
        aligned += sum(len(w.idx_source) for w in ws)
        if aligned >= tokens:
            return wins
    return wins


def bare_forward(wins, source, target, top_source: int, top_target: int, batch_size: int) -> float:
    """Seconds for stop_at_layer forwards of both models on the same windows and batches as the cache."""
    total = 0.0
    for adapter, encs, top in ((source, [w.source for w in wins], top_source),
                               (target, [w.target for w in wins], top_target)):
        order = sorted(range(len(encs)), key=lambda i: -len(encs[i]))
        batches = []
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            ids = torch.zeros((len(chunk), max(len(encs[i]) for i in chunk)), dtype=torch.long)
            for r, i in enumerate(chunk):
                ids[r, :len(encs[i])] = encs[i].ids
            batches.append(ids)
        t = time.perf_counter()
        with torch.inference_mode():
            for ids in batches:
                adapter.model(ids, stop_at_layer=top)
        total += time.perf_counter() - t
    return total


def saelens_time(adapter, layer: int, tokens: int, context_size: int, batch_size: int, out: Path) -> tuple[float, int]:
    """Seconds and tokens for sae-lens CacheActivationsRunner on packed wiki-en rows of the adapter's tokens."""
    import datasets
    import sae_lens.cache_activations_runner as car
    from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig

    from stitchplug.cache.corpus import open_corpus

    n_seq = max(1, tokens // context_size)
    rows, buf = [], []
    for doc in open_corpus("wiki-en"):
        buf += adapter.encode(doc["text"]).ids[1:].tolist()
        while len(buf) >= context_size - 1 and len(rows) < n_seq:
            rows.append([int(adapter.bos_id)] + buf[:context_size - 1])
            buf = buf[context_size - 1:]
        if len(rows) >= n_seq:
            break
    ds = datasets.Dataset.from_dict({"input_ids": rows})
    cfg = CacheActivationsRunnerConfig(
        dataset_path="local/wiki-en", model_name="local", model_batch_size=batch_size,
        hook_name=adapter.hook_name(layer), d_in=adapter.d_model, training_tokens=n_seq * context_size,
        context_size=context_size, new_cached_activations_path=str(out), shuffle=False, device="cpu",
        buffer_size_gb=0.02, prepend_bos=False)
    original = car.load_model
    car.load_model = lambda *a, **k: adapter.model  # the offline model; sae-lens would fetch from the hub
    try:
        runner = CacheActivationsRunner(cfg, override_dataset=ds)
        t = time.perf_counter()
        out_ds = runner.run()
        # sae-lens fills whole buffers (cycling the rows if needed): count what it actually cached
        return time.perf_counter() - t, len(out_ds) * context_size
    finally:
        car.load_model = original


def read_ratio(cache_path, work: Path) -> dict:
    from stitchplug.cache.reader import open_cache

    with open_cache(cache_path) as c:
        keys = [("source", l) for l in c.source_layers] + [("target", l) for l in c.target_layers]
        files = []
        for side, l in keys:  # same bytes as raw files (untimed)
            arr = c.array(side, l)
            p = work / f"{side}_{l}.bin"
            arr.tofile(p)
            files.append((p, arr.dtype, arr.shape))
        n_bytes = sum(np.prod(s) * np.dtype(d).itemsize for _, d, s in files)
        t_shuffled = t_memmap = float("inf")
        for _ in range(3):  # best of 3 passes each, alternating (both warm in the page cache)
            t = time.perf_counter()
            n = 0
            for batch in c.batches(keys, batch_size=4096, split=None, seed=0, shuffle=True):
                n += sum(x.numel() * x.element_size() for x in batch)
            t_shuffled = min(t_shuffled, time.perf_counter() - t)
            t = time.perf_counter()
            m = 0
            maps = [np.memmap(p, dtype=d, mode="r", shape=s) for p, d, s in files]
            for s in range(0, c.n_tokens, 4096):  # same batch structure: a tuple of one array per key
                batch = tuple(torch.from_numpy(np.array(mm[s:s + 4096])) for mm in maps)
                m += sum(x.numel() * x.element_size() for x in batch)
            t_memmap = min(t_memmap, time.perf_counter() - t)
    assert n == m == n_bytes
    return {"read_bytes": int(n_bytes), "shuffled_read_mb_s": n_bytes / t_shuffled / 2**20,
            "memmap_read_mb_s": n_bytes / t_memmap / 2**20, "shuffled_read_vs_memmap": t_memmap / t_shuffled}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8000, help="aligned tokens to cache")
    ap.add_argument("--source", default="smollm2-135m")
    ap.add_argument("--target", default="gemma-3-270m")
    ap.add_argument("--source-layer", type=int, default=None, help="default: the middle layer")
    ap.add_argument("--target-layers", default="all", help="comma list or 'all' (the cache default)")
    ap.add_argument("--context-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, deleted)")
    args = ap.parse_args()

    from stitchplug.adapter import load_model
    from stitchplug.cache.writer import build_cache

    work = Path(args.work or tempfile.mkdtemp(prefix="stitchplug-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        source, target = load_model(args.source), load_model(args.target)
        la = args.source_layer if args.source_layer is not None else source.n_layers // 2
        lb = None if args.target_layers == "all" else [int(x) for x in args.target_layers.split(",")]
        kw = dict(tokens=args.tokens, context_size=args.context_size, batch_size=args.batch_size, progress=False,
                  log=lambda m: None)
        log(f"1/3 caching {args.tokens} tokens {args.source}[{la}] -> {args.target}[{args.target_layers}]")
        # one-time costs (tokenizer fingerprints) out of the timing; bare forwards run before AND
        # after the cache and are averaged, since other load on the machine drifts
        from stitchplug.cache.windows import fingerprint

        fingerprint(source), fingerprint(target)
        wins = plan_windows(source, target, args.tokens, args.context_size)
        tops = (la, max(lb) if lb else target.n_layers - 1)
        t_bare_before = bare_forward(wins, source, target, *tops, args.batch_size)
        t = time.perf_counter()
        pair = build_cache(work / "pair.h5", source, target, source_layers=[la], target_layers=lb, **kw)
        t_cache = time.perf_counter() - t
        t_bare_after = bare_forward(wins, source, target, *tops, args.batch_size)
        t_bare = (t_bare_before + t_bare_after) / 2
        log(f"2/3 one model and hook vs sae-lens ({args.source} {source.hook_name(la)})")
        fingerprint(source)
        t = time.perf_counter()
        build_cache(work / "single.h5", source, source, source_layers=[la], target_layers=[la], **kw)
        t_single = time.perf_counter() - t
        t_sl, sl_tokens = saelens_time(source, la, args.tokens, args.context_size, args.batch_size, work / "saelens")
        log("3/3 shuffled read vs numpy.memmap")
        reads = read_ratio(pair, work)
        sl_rate = sl_tokens / t_sl
        print(json.dumps({
            "bench": "cache", "source": args.source, "target": args.target, "tokens": args.tokens,
            "source_layer": la, "target_layers": args.target_layers, "context_size": args.context_size,
            "cache_tokens_per_s": args.tokens / t_cache, "bare_forward_tokens_per_s": args.tokens / t_bare,
            "cache_vs_bare_forward": t_bare / t_cache,
            "bare_seconds_before_after": [t_bare_before, t_bare_after], "cache_seconds": t_cache,
            "single_tokens_per_s": args.tokens / t_single, "saelens_tokens_per_s": sl_rate,
            "single_vs_saelens": (args.tokens / t_single) / sl_rate,
            "single_vs_saelens_per_pass": (2 * args.tokens / t_single) / sl_rate,
            **reads,
        }))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
