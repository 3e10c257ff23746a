"""`stitchplug browse` on a finished SAE run folder: wall time and peak memory, as one JSON line.

Usage: python bench/browse.py --run runs/quick [--threads 2] [--wide 16384] [--docs 256]
Copies the run folder (hard links for the cache; nothing in it is written), runs `browse` in a fresh
child process on the copy (the run's SAEs: 2,304 latents for the quick preset), then again on a
second copy whose source SAE is a random TopK SAE of ``--wide`` latents (same d_in and k) and whose
transferred SAE is its Eq. 6 transfer through the run's stitch: the peak memory of a 16k-latent SAE.
Each child reports its own wall time (including model loading) and peak RSS. ``ratio_to_goal`` is
the first run's seconds over the issue's goal (120 s on 2 cores for 2,304 latents).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 120.0


def _copy(src: Path, dst: Path) -> None:
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("browse", ".lock"), copy_function=link)
    for p in (dst / "metrics.json", dst / "config.yaml"):  # small files the run may rewrite: real copies
        if p.exists():
            data = p.read_bytes()
            p.unlink()
            p.write_bytes(data)


def _widen(run: Path, width: int, seed: int = 0) -> None:
    """Replace the copy's source/transferred SAEs by a random ``width``-latent TopK SAE and its transfer."""
    import torch
    from sae_lens import SAE

    from stitchplug.api import RunFolder
    from stitchplug.sae.io import save_sae
    from stitchplug.sae.transfer import transfer_sae

    rf = RunFolder(run)
    src = rf.load_artifact("sae", "source")
    cfg = src.cfg.to_dict()
    cfg.update(d_sae=int(width), device="cpu")
    torch.manual_seed(seed)
    wide = SAE.from_dict(cfg)
    with torch.no_grad():
        u = torch.randn(width, int(cfg["d_in"]))
        wide.W_dec.copy_(u / u.norm(dim=1, keepdim=True))
        wide.W_enc.copy_(wide.W_dec.T)
        wide.b_enc.zero_()
        wide.b_dec.copy_(src.b_dec)
    tgt = transfer_sae(wide, rf.load_stitch())
    for role, sae in (("source", wide), ("transferred", tgt)):
        shutil.rmtree(rf.artifact("sae", role))
        save_sae(sae, rf.artifact("sae", role))


def child(run: str, threads: int, docs: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from stitchplug_browse.runner import browse

    t0 = time.perf_counter()
    s = browse(run, docs=docs, log=lambda m: print(m, file=sys.stderr), progress=False)
    print(json.dumps({"seconds": time.perf_counter() - t0, "seconds_passes": s["seconds_passes"],
                      "latents": s["n_latents"], "live": s["n_live"], "docs": s["n_docs"],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _run_child(run: Path, threads: int, docs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, __file__, "--child", str(run), "--threads", str(threads), "--docs", str(docs)],
                       env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"error: browse failed on {run}:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/quick")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--wide", type=int, default=16384, help="latents of the wide random SAE (0: skip)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.threads, a.docs)
        return
    src = Path(a.run)
    if not (src / "artifacts" / "sae" / "transferred").is_dir():
        sys.exit(f"error: {src} is not a finished SAE run folder (run `make demo` first)")
    tmp = Path(tempfile.mkdtemp(prefix="stitchplug-browse-bench-"))
    try:
        _copy(src, tmp / "run")
        out = {"run": str(src), "threads": a.threads, **_run_child(tmp / "run", a.threads, a.docs)}
        out["ratio_to_goal"] = out["seconds"] / GOAL_SECONDS
        if a.wide:
            _copy(src, tmp / "wide")
            _widen(tmp / "wide", a.wide)
            out["wide"] = _run_child(tmp / "wide", a.threads, a.docs)
            out["wide_peak_rss_ratio"] = out["wide"]["peak_rss_mb"] / out["peak_rss_mb"]
        print(json.dumps(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
