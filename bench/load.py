"""Benchmark the default models' first load (GGUF dequantised and saved) against a second load (the
saved float32 copy read back) in a fresh cache folder.

Progress goes to stderr; stdout gets ONE JSON line with the seconds of each load and their ratio,
measured in this run (the ratio was asserted in a timed test before; timings live here now).

    python bench/load.py --models smollm2-135m,gemma-3-270m
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,gemma-3-270m", help="Comma-separated default model names.")
    args = ap.parse_args()
    from stitchplug.adapter import load_model

    out = {"bench": "load"}
    for name in [m for m in args.models.split(",") if m]:
        with tempfile.TemporaryDirectory(prefix="stitchplug-bench-load-") as cache:
            t = time.perf_counter()
            model = load_model(name, cache_dir=cache)
            first = time.perf_counter() - t
            del model
            t = time.perf_counter()
            model = load_model(name, cache_dir=cache)
            second = time.perf_counter() - t
            del model
        print(f"[bench/load] {name}: first {first:.1f} s, second {second:.1f} s", file=sys.stderr, flush=True)
        out[name] = {"first_s": round(first, 2), "second_s": round(second, 2),
                     "first_over_second": round(first / second, 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
