"""Throughput of probe transfer and its share of the run, as one JSON line.

Usage: python bench/probe.py [--from runs/quick] [--output-dir DIR] [extra `stitchplug run` flags...]
       python bench/probe.py --summarise RUN   (only read a finished probe run folder: no new run)
Copies a finished SAE run folder (``make demo``'s runs/quick by default; its stitch and SAEs are
reused, its cache is symlinked), runs ``stitchplug run --artifact probe --preset quick`` in the copy, and prints examples per
second through both models (feature extraction), the split of the probe stage between feature
extraction and probe fitting, and the probe stages' share of all stage seconds recorded in the folder
(the SAE run's stages included). Ratios are measured within one run; absolute seconds are noisy on a
shared machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from", dest="src", default="runs/quick")
    ap.add_argument("--output-dir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--summarise", default=None, help="print the line for a finished probe run folder")
    args, extra = ap.parse_known_args()
    if args.summarise:
        print(json.dumps(summarise(Path(args.summarise), None)))
        return
    src = Path(args.src)
    if not (src / "stages").is_dir():
        sys.exit(f"error: {src} is not a finished run folder (run `make demo` first)")
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="stitchplug-probe-bench-")) / "run"
    copy_run(src, out)
    from stitchplug.cli import main as cli_main

    t0 = time.perf_counter()
    try:
        cli_main(["run", "--artifact", "probe", "--preset", "quick", "--output-dir", str(out), "--no-progress", *extra])
    except SystemExit as exc:
        if exc.code:
            raise
    total = time.perf_counter() - t0
    print(json.dumps(summarise(out, total)))
    if not args.keep and args.output_dir is None:
        shutil.rmtree(out.parent, ignore_errors=True)


CACHE = ("cache.h5", "cache.h5.shards")
"""The cache's entry file and shard folder: linked, not copied (9.3 GB for a 2M-token cache; the probe
run only reads it)."""


def copy_run(src: Path, out: Path) -> None:
    """``src`` copied to ``out`` without its probe stages, results and report; the cache is symlinked."""
    if out.exists():
        shutil.rmtree(out)
    top = set(CACHE)
    shutil.copytree(src, out, ignore=lambda d, names: [n for n in names if n.startswith(("probe", "report"))
                                                       or (Path(d) == src and n in top)])
    for name in CACHE:
        if (src / name).exists():
            (out / name).symlink_to((src / name).resolve(), target_is_directory=(src / name).is_dir())
    for stale in (out / "stages").glob("probe.*"):
        stale.unlink()
    shutil.rmtree(out / "artifacts" / "probe", ignore_errors=True)


def summarise(out: Path, total: float | None) -> dict:
    stages = {}
    for marker in sorted((out / "stages").glob("*.json")):
        stages[marker.stem] = json.loads(marker.read_text()).get("seconds") or 0.0
    m = json.loads((out / "metrics.json").read_text())["probe"]
    res = m["aggregate"] | m["diagnostics"]
    t = res["timing"]
    probe_s = sum(v for k, v in stages.items() if k.startswith("probe."))
    all_s = sum(stages.values())
    return {
        "bench": "probe_quick", "wall_s": None if total is None else round(total, 1), "examples": t["examples"],
        "examples_per_s_both_models": round(t["examples_per_second"], 2),
        "feature_share_of_probe_stage": round(t["feature_seconds"] / max(probe_s, 1e-9), 3),
        "probe_fit_share_of_probe_stage": round(t["probe_seconds"] / max(probe_s, 1e-9), 3),
        "probe_share_of_run": round(probe_s / max(all_s, 1e-9), 3),
        "stage_s": {k: round(v, 1) for k, v in stages.items()},
        "tasks": len(res["tasks"]), "selection": res.get("settings", {}).get("selection"),
        "k5_mean": {arm: round(by_k["5"]["mean"], 3) for arm, by_k in res["sparse"].items() if "5" in by_k},
        "k5_recovery_median": {arm: round(r["median"], 2) for arm, r in res.get("recovery", {}).items()},
        "failures": len(res.get("failures", [])),
    }


if __name__ == "__main__":
    sys.exit(main())
