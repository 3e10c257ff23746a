"""Benchmark the stitch solvers on a default-pair cache (smollm2-135m -> gemma-3-270m).

Builds (or reuses) a paired cache of ``--tokens`` wiki-en tokens, picks the Gemma layer by SVCCA,
then fits ``lstsq``, ``lstsq+adam`` and ``adam`` (the paper recipe: lr 1e-4, clip 1.0, cosine,
2 epochs, 5,120 tokens/step) on the same training split and measures held-out Eq. 3 loss and wall
time. Optionally also a longer Adam run and the Table-1 stitched next-token loss of the lstsq stitch.
Progress goes to stderr; stdout gets ONE JSON line with ratios measured in this run.

    python bench/stitch.py --tokens 40000 --ce-docs 12
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def log(msg: str) -> None:
    print(f"[bench/stitch {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load(name: str):
    from stitchplug.adapter import load_model
    from stitchplug.errors import PluginError

    try:
        return load_model(name)
    except PluginError:  # the models plugin may not register its loaders yet
        from stitchplug_models.gguf_models import load as gguf_load

        return gguf_load(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/stitchplug-bench-stitch", help="Folder for the cache and stitches.")
    ap.add_argument("--cache", default=None, help="Use this existing paired cache instead of building one.")
    ap.add_argument("--tokens", type=int, default=40_000)
    ap.add_argument("--context-size", type=int, default=128)
    ap.add_argument("--source-layer", type=int, default=15)
    ap.add_argument("--target-layers", default="all", help="Comma list of Gemma layers to cache, or 'all'.")
    ap.add_argument("--svcca-tokens", type=int, default=5000)
    ap.add_argument("--long-epochs", type=int, default=0, help="Also run Adam (lr 1e-3, batch 1024) this many epochs.")
    ap.add_argument("--ce-docs", type=int, default=0, help="Held-out documents for the Table-1 stitched loss.")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--refine-iters", type=int, default=100, help="L-BFGS iterations of the lstsq+lbfgs variant.")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from stitchplug.cache.reader import open_cache
    from stitchplug.cache.writer import build_cache
    from stitchplug.config import StitchConfig
    from stitchplug.stitch.api import pair_meta
    from stitchplug.stitch.data import CacheSource
    from stitchplug.stitch.evaluate import evaluate_recon
    from stitchplug.stitch.fit import fit_stitch
    from stitchplug.stitch.svcca import choose_layer_from_cache

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    a = b = None
    if args.cache is None or args.ce_docs:
        t0 = time.perf_counter()
        a, b = load("smollm2-135m"), load("gemma-3-270m")
        log(f"models loaded in {time.perf_counter() - t0:.0f}s")
    tl = None if args.target_layers == "all" else [int(x) for x in args.target_layers.split(",")]
    t0 = time.perf_counter()
    if args.cache is None:
        path = build_cache(out / "cache.h5", a, b, tokens=args.tokens, context_size=args.context_size,
                           source_layers=[args.source_layer], target_layers=tl, progress=False, log=log)
    else:
        path = Path(args.cache)
    cache_s = time.perf_counter() - t0
    cache = open_cache(path)
    names = (cache.attrs.get("source_model"), cache.attrs.get("target_model"))
    log(f"cache {path}: {cache.n_tokens} tokens ({cache_s:.0f}s)")

    t0 = time.perf_counter()
    lB, profile = choose_layer_from_cache(cache, args.source_layer, args.svcca_tokens)
    svcca_s = time.perf_counter() - t0
    log(f"SVCCA best target layer {lB}: " + ", ".join(f"{k}:{v:.3f}" for k, v in profile.items()))

    held = CacheSource(cache, args.source_layer, lB, 8192, split="eval", shuffle=False)
    results = {}
    runs = [("lstsq", StitchConfig(solver="lstsq")),
            ("lstsq+lbfgs", StitchConfig(solver="lstsq")),
            ("lstsq+adam", StitchConfig(solver="lstsq+adam")),
            ("adam", StitchConfig(solver="adam"))]
    if args.long_epochs:
        runs.append(("adam_long", StitchConfig(solver="adam", lr=1e-3, batch_size=1024, epochs=args.long_epochs)))
    stitches = {}
    for name, cfg in runs:
        src = CacheSource(cache, args.source_layer, lB, cfg.batch_size, split="train", shuffle=True, seed=0)
        res = fit_stitch(src, cache.d_source, cache.d_target, cfg, seed=0,
                         refine_iters=args.refine_iters if name == "lstsq+lbfgs" else 0)
        recon = evaluate_recon(res.stitch, held, cfg.alpha)
        results[name] = {"wall_s": res.info["wall_s"], "flops": res.info["flops"], "steps": res.info["steps"],
                         "heldout_loss": recon["loss"], "fvu": {k: recon[k]["fvu"] for k in ("up", "down", "aba", "bab")},
                         "fvu_excl_massive": {k: recon[k]["fvu_excl_massive"] for k in ("up", "down", "aba", "bab")},
                         "fvu_per_dim": {k: recon[k]["fvu_per_dim"] for k in ("up", "down", "aba", "bab")},
                         "massive_dims": recon["massive_dims"]}
        stitches[name] = res.stitch
        res.stitch.save(out / f"{name}.safetensors", pair_meta(cache, args.source_layer, lB))
        log(f"{name}: held-out loss {recon['loss']['total']:.6g} in {res.info['wall_s']:.1f}s "
            f"({res.info['steps']} Adam steps, {res.info['flops']:.3g} FLOPs)")

    line = {
        "bench": "stitch", "pair": f"{names[0]}.{args.source_layer} -> {names[1]}.{lB}",
        "tokens": cache.n_tokens, "train_tokens": sum(e - s for s, e in cache.ranges("train")),
        "heldout_tokens": sum(e - s for s, e in cache.ranges("eval")), "threads": torch.get_num_threads(),
        "svcca_profile": {int(k): round(v, 4) for k, v in profile.items()}, "svcca_s": svcca_s,
        "target_layer": lB, "cache_s": cache_s,
        "loss_ratio_lstsq_over_adam": results["lstsq"]["heldout_loss"]["total"] / results["adam"]["heldout_loss"]["total"],
        "time_ratio_lstsq_over_adam": results["lstsq"]["wall_s"] / results["adam"]["wall_s"],
        "loss_ratio_lstsq_over_lstsq_adam": results["lstsq"]["heldout_loss"]["total"] / results["lstsq+adam"]["heldout_loss"]["total"],
        "flops_ratio_lstsq_over_adam": results["lstsq"]["flops"] / results["adam"]["flops"],
        "loss_ratio_lstsq_lbfgs_over_adam": (results["lstsq+lbfgs"]["heldout_loss"]["total"]
                                             / results["adam"]["heldout_loss"]["total"]),
        "time_ratio_lstsq_lbfgs_over_adam": results["lstsq+lbfgs"]["wall_s"] / results["adam"]["wall_s"],
        "results": results,
    }
    if args.long_epochs:
        line["loss_ratio_lstsq_over_adam_long"] = (results["lstsq"]["heldout_loss"]["total"]
                                                   / results["adam_long"]["heldout_loss"]["total"])
        line["time_ratio_lstsq_over_adam_long"] = results["lstsq"]["wall_s"] / results["adam_long"]["wall_s"]
    if args.ce_docs:
        from stitchplug.config import CacheConfig
        from stitchplug.stitch.api import heldout_texts, stitched_ce_eval

        texts = heldout_texts(CacheConfig(), cache, args.ce_docs)
        st = stitches["lstsq"]
        st.meta.update(source_layer=args.source_layer, target_layer=lB)
        t0 = time.perf_counter()
        line["table1_lstsq"] = stitched_ce_eval(st, a, b, texts, args.context_size)
        line["table1_s"] = time.perf_counter() - t0
        log(f"Table 1 row: {line['table1_lstsq']}")
    (out / "bench.json").write_text(json.dumps(line, indent=2))
    print(json.dumps(line))


if __name__ == "__main__":
    main()
