"""Benchmark of the paired activation cache; prints ONE JSON line with ratios measured in this run.

1. ``cache_vs_bare_forward``: caching throughput (tokenise, window, align, forward, write HDF5) over a
   bare ``stop_at_layer`` forward of both models on the same windows and batches (target >= 0.9),
   with the writer overlapped (``--queue-depth``, the default 2: issue 24); ``cache_vs_bare_forward_sync``
   is the same cache built in the same run with queue depth 0 (the synchronous path, all in one thread)
   unless ``--no-sync``. The shards of both builds are compared byte for byte (``shards_identical``).
2. ``single_vs_saelens``: one model and hook (source model at its cached layer) through
   ``build_cache`` on the pair (model, model) over sae-lens's ``CacheActivationsRunner`` on the same
   model, hook and number of tokens (``buffer_size_gb`` 0.02, no wandb, rows pre-tokenised for
   sae-lens and outside its timing; our time includes tokenising, windowing and alignment). Since
   issue 14 a self-pair runs ONE encode and ONE forward per window (the target side reuses the
   source's bits; it still writes both copies), so this is a per-pass ratio;
   ``single_vs_saelens_per_pass`` is the same number (it used to halve a two-pass time).
3. ``shuffled_read_vs_memmap``: ``PairedCache.batches(shuffle=True)`` over all cached layers versus
   reading the same bytes sequentially from ``numpy.memmap`` files (target >= 0.5).
4. ``selected_vs_all_layers`` (issue 14): the default preset's cache stage as it was (every target
   layer cached, SVCCA afterwards on the cache) versus layer-selective caching (a plan of the slice,
   an SVCCA probe of ``--svcca-tokens`` rows run in the writer's own first batches, then source layer +
   chosen layer only, the probed batches not run again), both on ``--stage-tokens`` tokens in this run;
   ``..._with_svcca`` adds the old path's SVCCA on the cache (then done by the stitch stage) to its
   side; the chosen layers of both; bytes per row and the disk ratio; the padding ratio (positions run
   / real tokens) of each; and the ratio projected to ``--full-tokens`` (200,000, the default preset)
   from per-token times, the SVCCA fits counted as fixed costs (scaled by the probe-size ratio).
   Run it at ``--stage-tokens 200000`` to measure the default budget itself (no projection).

Usage: ``python bench/cache.py [--tokens 8000] [--source smollm2-135m] [--target gemma-3-270m]
[--sections forward,saelens,read,stage] [--stage-tokens 20000]``.
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


def _disk_bytes(entry: Path) -> int:
    return entry.stat().st_size + sum(p.stat().st_size for p in entry.with_name(entry.name + ".shards").glob("*.h5"))


def stage_ratio(source, target, la: int, args, work: Path) -> dict:
    """Section 4: all target layers (then SVCCA on the cache) vs the SVCCA probe + one target layer."""
    from stitchplug.cache import writer
    from stitchplug.cache.reader import open_cache
    from stitchplug.cache.select import build_selected_cache
    from stitchplug.cache.writer import build_cache
    from stitchplug.stitch.svcca import choose_layer_from_cache

    kw = dict(tokens=args.stage_tokens, context_size=args.context_size, batch_size=args.batch_size,
              source_layers=[la], progress=False, log=log)
    out = {"stage_tokens": args.stage_tokens, "svcca_tokens": args.svcca_tokens, "full_tokens": args.full_tokens}
    log(f"stage: every target layer, {args.stage_tokens} tokens")
    writer.FORWARD_STATS.update(positions=0, tokens=0)
    t = time.perf_counter()
    old = build_cache(work / "all.h5", source, target, target_layers=None, **kw)
    t_old = time.perf_counter() - t  # the cache stage only; today's SVCCA ran in the stitch stage
    t = time.perf_counter()
    with open_cache(old) as c:
        lb_old, _ = choose_layer_from_cache(c, la, min(args.svcca_tokens, len(c.rows("train"))))
    t_svcca_old = time.perf_counter() - t
    pad_old = writer.FORWARD_STATS["positions"] / writer.FORWARD_STATS["tokens"]
    log(f"stage: plan, SVCCA probe ({args.svcca_tokens} tokens) in the writer's batches, then one target layer")
    writer.FORWARD_STATS.update(positions=0, tokens=0)
    t = time.perf_counter()
    new, sel = build_selected_cache(work / "sel.h5", source, target, target_layers=None,
                                    svcca_tokens=args.svcca_tokens, **kw)
    t_new = time.perf_counter() - t
    pad_new = writer.FORWARD_STATS["positions"] / writer.FORWARD_STATS["tokens"]
    with open_cache(old) as c_old, open_cache(new) as c_new:
        n_old, n_new = c_old.n_tokens, c_new.n_tokens
    b_old, b_new = _disk_bytes(old) / n_old, _disk_bytes(new) / n_new
    # per-token work scales with the budget; the SVCCA fits with the probe size
    fix = sel["svcca_seconds"]
    full_old = t_old * args.full_tokens / n_old
    full_new = (t_new - fix) * args.full_tokens / n_new + fix * args.full_svcca_tokens / sel["tokens"]
    out.update({
        "all_layers_seconds": t_old, "selected_seconds": t_new, "probe_seconds": sel["seconds"],
        "probe_plan_seconds": sel["plan_seconds"], "probe_svcca_seconds": sel["svcca_seconds"],
        "svcca_on_all_layer_cache_seconds": t_svcca_old,
        "selected_vs_all_layers_stage": t_old / t_new,
        "selected_vs_all_layers_stage_with_svcca": (t_old + t_svcca_old) / t_new,
        "projected_full_stage_ratio": full_old / full_new,
        "projected_full_seconds": {"all_layers": full_old, "selected": full_new},
        "chosen_layer_all_layers_cache": lb_old, "chosen_layer_probe": sel["target_layer"],
        "probe_profile": sel["profile"],
        "bytes_per_row": {"all_layers": b_old, "selected": b_new}, "disk_ratio": b_old / b_new,
        "projected_full_gb": {"all_layers": b_old * args.full_tokens / 1e9, "selected": b_new * args.full_tokens / 1e9},
        "padding_ratio": {"all_layers": pad_old, "selected": pad_new},
    })
    return out


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
    ap.add_argument("--sections", default="forward,saelens,read,stage", help="which parts to run (comma list)")
    from stitchplug.cache.writer import QUEUE_DEPTH

    ap.add_argument("--queue-depth", type=int, default=QUEUE_DEPTH, help="cache.queue_depth of the timed cache")
    ap.add_argument("--no-sync", action="store_true", help="skip the queue-depth-0 build of the forward section")
    ap.add_argument("--stage-tokens", type=int, default=20_000, help="tokens of the stage comparison")
    ap.add_argument("--full-tokens", type=int, default=200_000, help="token budget the stage ratio is projected to")
    from stitchplug.config import SVCCA_TOKENS

    ap.add_argument("--svcca-tokens", type=int, default=SVCCA_TOKENS, help="SVCCA probe tokens (stitch.svcca_tokens)")
    ap.add_argument("--full-svcca-tokens", type=int, default=SVCCA_TOKENS,
                    help="probe size at the full budget (the projection scales the measured probe time to it)")
    args = ap.parse_args()
    sections = set(args.sections.split(","))

    from stitchplug.adapter import load_model
    from stitchplug.cache.writer import build_cache

    work = Path(args.work or tempfile.mkdtemp(prefix="stitchplug-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        source, target = load_model(args.source), load_model(args.target)
        la = args.source_layer if args.source_layer is not None else source.n_layers // 2
        lb = None if args.target_layers == "all" else [int(x) for x in args.target_layers.split(",")]
        kw = dict(tokens=args.tokens, context_size=args.context_size, batch_size=args.batch_size, progress=False,
                  log=lambda m: None, queue_depth=args.queue_depth)
        result = {"bench": "cache", "source": args.source, "target": args.target, "tokens": args.tokens,
                  "source_layer": la, "target_layers": args.target_layers, "context_size": args.context_size,
                  "batch_size": args.batch_size, "queue_depth": args.queue_depth, "torch_threads": torch.get_num_threads()}
        from stitchplug.cache.align import fingerprint

        fingerprint(source), fingerprint(target)  # one-time costs (tokenizer fingerprints) out of the timing
        pair = None
        if "forward" in sections or "read" in sections:
            log(f"caching {args.tokens} tokens {args.source}[{la}] -> {args.target}[{args.target_layers}]")
            # bare forwards run before AND after the cache and are averaged, since other load drifts
            wins = plan_windows(source, target, args.tokens, args.context_size)
            tops = (la, max(lb) if lb else target.n_layers - 1)
            t_bare_before = bare_forward(wins, source, target, *tops, args.batch_size)
            t = time.perf_counter()
            pair = build_cache(work / "pair.h5", source, target, source_layers=[la], target_layers=lb, **kw)
            t_cache = time.perf_counter() - t
            if not args.no_sync and args.queue_depth != 0:
                log("the same cache with queue depth 0 (synchronous)")
                t = time.perf_counter()
                sync = build_cache(work / "sync.h5", source, target, source_layers=[la], target_layers=lb,
                                   **{**kw, "queue_depth": 0})
                t_sync = time.perf_counter() - t
            t_bare_after = bare_forward(wins, source, target, *tops, args.batch_size)
            t_bare = (t_bare_before + t_bare_after) / 2
            result.update({"cache_tokens_per_s": args.tokens / t_cache, "bare_forward_tokens_per_s": args.tokens / t_bare,
                           "cache_vs_bare_forward": t_bare / t_cache,
                           "bare_seconds_before_after": [t_bare_before, t_bare_after], "cache_seconds": t_cache})
            if not args.no_sync and args.queue_depth != 0:
                def shards(entry):
                    return [q.read_bytes() for q in sorted(Path(f"{entry}.shards").glob("shard_*.h5"))]
                result.update({"cache_vs_bare_forward_sync": t_bare / t_sync, "cache_seconds_sync": t_sync,
                               "overlap_speedup": t_sync / t_cache, "shards_identical": shards(pair) == shards(sync)})
        if "saelens" in sections:
            log(f"one model and hook vs sae-lens ({args.source} {source.hook_name(la)})")
            t = time.perf_counter()
            build_cache(work / "single.h5", source, source, source_layers=[la], target_layers=[la], **kw)
            t_single = time.perf_counter() - t
            t_sl, sl_tokens = saelens_time(source, la, args.tokens, args.context_size, args.batch_size, work / "saelens")
            sl_rate = sl_tokens / t_sl
            result.update({"single_tokens_per_s": args.tokens / t_single, "saelens_tokens_per_s": sl_rate,
                           "single_vs_saelens": (args.tokens / t_single) / sl_rate,
                           "single_vs_saelens_per_pass": (args.tokens / t_single) / sl_rate})
        if "read" in sections:
            log("shuffled read vs numpy.memmap")
            result.update(read_ratio(pair, work))
        if "stage" in sections:
            result.update(stage_ratio(source, target, la, args, work))
        print(json.dumps(result))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
