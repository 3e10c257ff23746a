"""Wall time per stage and peak memory of `stitchplug run --preset quick`, as one JSON line.

Usage: python bench/run.py [--output-dir DIR] [extra `stitchplug run` flags...]
The run folder is made fresh (a temporary one by default) so every stage really runs. Besides
absolute seconds (noisy on a shared machine) it prints each stage's share of the total, which is
comparable across runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output-dir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the run folder")
    args, extra = ap.parse_known_args()
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="stitchplug-bench-")) / "run"
    if out.exists():
        shutil.rmtree(out)
    from stitchplug.cli import main as cli_main

    t0 = time.perf_counter()
    try:
        cli_main(["run", "--preset", "quick", "--output-dir", str(out), "--no-progress", *extra])
    except SystemExit as exc:
        if exc.code:
            raise
    total = time.perf_counter() - t0
    stages = {}
    for marker in sorted((out / "stages").glob("*.json")):
        stages[marker.stem] = round(json.loads(marker.read_text())["seconds"], 2)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics = json.loads((out / "metrics.json").read_text())
    rec = {k: v["reconstruction"]["fvu"] for k, v in metrics["sae"].items() if "reconstruction" in v}
    print(json.dumps({
        "bench": "run_quick", "total_s": round(total, 1), "stage_s": stages,
        "stage_share": {k: round(v / total, 3) for k, v in stages.items()},
        "peak_rss_mib": round(peak_mib), "fvu": rec, "n_cache_tokens": metrics["cache"]["n_tokens"],
    }))
    if not args.keep and args.output_dir is None:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
