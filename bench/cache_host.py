"""Benchmark of the cache's host work alone (issue 24, ``cache.host_workers``); prints ONE JSON line.

No models: synthetic float32 activations of one forward batch (``--batch`` windows of ``--context``
tokens) at gemma-2-2b / gemma-2-9b widths (d 2304 source, 3584 target, one layer each, as
``bench/gpu.py``'s cache rows), about 90 % of each window's positions aligned, split into shards of
``shard_rows`` as ``build_cache`` sizes them (64 MiB of rows). Per batch it times the writer's host work
on every shard of the batch: gather of the aligned rows, packing to ``--dtype`` (default bfloat16), the
HDF5 shard, its digests, fsync and the atomic rename, in the writer thread alone:

- ``old``: the code before ``cache.host_workers`` (kept here verbatim as :func:`old_store_shard`): one
  thread, digests by re-reading the finished file;
- ``new``: ``_Writer.store_shard`` with a pool of ``--workers`` threads (``stitchplug.cache.hostwork``),
  and with 1 worker (``new_1_worker``: in-memory digests, no pool).

``ratio_old_over_new`` > 1 means the new path is faster. The shards of the old and new paths are
compared byte for byte (``identical``). Each path first stores one shard untimed (warm-up), then
batches alternate between the paths. Usage: ``python bench/cache_host.py [--batches 1] [--context 1024]
[--workers 3] [--out FILE]`` (under a minute on 2 cores at the defaults; fewer tokens with ``--context 256``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import torch

from stitchplug.adapter import Encoded
from stitchplug.atomic import removing
from stitchplug.cache import integrity
from stitchplug.cache.format import BF16_ATTR, FORMAT, FORMAT_VERSION, SIDES, layer_key, store
from stitchplug.cache.hostwork import HostPool
from stitchplug.cache.plan import Doc, Shard
from stitchplug.cache.windows import Window
from stitchplug.cache.writer import SHARD_BYTES, _fsync_replace, _Writer


def old_store_shard(self: _Writer, k: int, shard: Shard, acts: dict) -> dict:
    """``_Writer.store_shard`` as it was before the host pool (the baseline)."""
    cfg, n = self.cfg, shard.rows
    wins = shard.windows()
    cols = {side: {l: [] for l in cfg[f"{side}_layers"]} for side in SIDES}
    meta = {k2: [] for k2 in ("source/token_ids", "target/token_ids", "source/ends", "target/ends", "doc_ids")}
    for wi, (doc, w, keep) in enumerate(wins):
        ia, ib = w.idx_source[:keep], w.idx_target[:keep]
        for side, idx, enc in (("source", ia, w.source), ("target", ib, w.target)):
            for l in cfg[f"{side}_layers"]:
                cols[side][l].append(acts[side][wi][l][idx])
            meta[f"{side}/token_ids"].append(enc.ids.numpy()[idx].astype(np.int32))
            meta[f"{side}/ends"].append(enc.ends.numpy()[idx].astype(np.int32))
        meta["doc_ids"].append(np.full(len(ia), doc.index, dtype=np.int64))
    final = self.shard_path(k)
    tmp = final.with_name(final.name + ".tmp")
    with removing(tmp), h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["config"] = json.dumps(cfg, sort_keys=True)
        f.attrs["shard"] = k
        f.attrs["rows"] = n
        for key, value in self.extra.items():
            f.attrs[key] = value
        for side in SIDES:
            d = self.source.d_model if side == "source" else self.target.d_model
            for l, parts in cols[side].items():
                x = np.concatenate(parts) if parts else np.zeros((0, d), np.float32)
                ds = f.create_dataset(f"{side}/{layer_key(l)}",
                                      data=store(x, cfg["dtype"], f"{side} layer {l} ({cfg[f'{side}_model']})"))
                if cfg["dtype"] == "bfloat16":
                    ds.attrs[BF16_ATTR] = "bfloat16"
        for key, parts in meta.items():
            f.create_dataset(key, data=np.concatenate(parts) if parts else np.zeros(0, np.int64))
        f.create_dataset("docs/index", data=np.array([d.index for d in shard.docs], dtype=np.int64))
        f.create_dataset("docs/key", data=[d.key for d in shard.docs], dtype=h5py.string_dtype())
        f.create_dataset("docs/n_rows", data=np.array([d.rows for d in shard.docs], dtype=np.int64))
        f.create_dataset("docs/stats", data=np.array([[d.real[0], d.real[1], d.aligned] for d in shard.docs],
                                                     dtype=np.int64).reshape(-1, 3))
    integrity.stamp(tmp)
    _fsync_replace(tmp, final)
    return {"path": final, "rows": n}


def synthetic_batch(a, rng) -> tuple[list[Shard], list[dict]]:
    """One forward batch as shards of one-window documents, with each shard's ``{side: [Acts]}``."""
    shards, acts, shard, cur = [], [], Shard(), {"source": [], "target": []}
    for i in range(a.batch):
        enc = Encoded(torch.arange(a.context) % 512, torch.arange(a.context), torch.zeros(a.context, dtype=torch.bool))
        keep = np.sort(rng.choice(a.context, size=int(0.9 * a.context), replace=False)).astype(np.int64)
        w = Window(enc, enc, keep, keep, 0, a.context)
        shard.docs.append(Doc(i, f"doc{i}", [w], len(keep), (a.context, a.context), len(keep)))
        for side, d in (("source", a.d_source), ("target", a.d_target)):
            cur[side].append({0: rng.standard_normal((a.context, d), dtype=np.float32)})
        if shard.rows >= a.shard_rows or i == a.batch - 1:
            shards.append(shard)
            acts.append(cur)
            shard, cur = Shard(), {"source": [], "target": []}
    return shards, acts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="windows per forward batch")
    ap.add_argument("--context", type=int, default=1024, help="tokens per window")
    ap.add_argument("--d-source", type=int, default=2304)
    ap.add_argument("--d-target", type=int, default=3584)
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--batches", type=int, default=1, help="timed batches per path")
    ap.add_argument("--workers", type=int, default=3, help="cache.host_workers of the new path")
    ap.add_argument("--dir", default=None, help="where the shards go (default: a temporary folder)")
    ap.add_argument("--out", default=None, help="also write the JSON line to this file")
    a = ap.parse_args()
    row_bytes = (2 if a.dtype != "float32" else 4) * (a.d_source + a.d_target) + 24
    a.shard_rows = max(256, SHARD_BYTES // row_bytes)
    root = Path(tempfile.mkdtemp(prefix="cache-host-", dir=a.dir))
    src = SimpleNamespace(d_model=a.d_source)
    tgt = SimpleNamespace(d_model=a.d_target)
    cfg = {"source_layers": [0], "target_layers": [0], "dtype": a.dtype, "source_model": "synthetic-2304",
           "target_model": "synthetic-3584", "shard_rows": a.shard_rows}
    shards, acts = synthetic_batch(a, np.random.default_rng(0))
    rows = sum(s.rows for s in shards)
    paths = {"old": 1, "new": a.workers, "new_1_worker": 1}
    times: dict[str, list[float]] = {p: [] for p in paths}
    try:
        for b in range(-1, a.batches):  # b = -1: the warm-up, one shard
            for name, workers in paths.items():
                out = root / name / f"b{b}" / "c.h5"
                w = _Writer(out, src, tgt, cfg, a.batch, lambda t: None)
                w.dir.mkdir(parents=True)
                with HostPool(workers) as pool:
                    w.pool = pool
                    store_fn = (lambda k, s, x: old_store_shard(w, k, s, x)) if name == "old" else w.store_shard
                    t = time.perf_counter()
                    for k, (shard, x) in enumerate(zip(shards[:1] if b < 0 else shards, acts)):
                        store_fn(k, shard, x)
                    if b >= 0:
                        times[name].append(time.perf_counter() - t)
                shutil.rmtree(root / name / f"b{b - 1}", ignore_errors=True)  # keep only the last batch's shards
        last = a.batches - 1
        old_files = sorted((root / "old" / f"b{last}" / "c.h5.shards").glob("shard_*.h5"))
        identical = bool(old_files) and all(
            p.read_bytes() == (root / n / f"b{last}" / "c.h5.shards" / p.name).read_bytes()
            for p in old_files for n in ("new", "new_1_worker"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    per = {p: (sum(v) / len(v) if v else float("nan")) for p, v in times.items()}
    res = {"bench": "cache_host", "rows_per_batch": rows, "shards_per_batch": len(shards), "shard_rows": a.shard_rows,
           "d_source": a.d_source, "d_target": a.d_target, "dtype": a.dtype, "workers": a.workers,
           "timed_batches": a.batches, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "old_s_per_batch": round(per["old"], 3), "new_s_per_batch": round(per["new"], 3),
           "new_1_worker_s_per_batch": round(per["new_1_worker"], 3),
           "ratio_old_over_new": round(per["old"] / per["new"], 3) if per["new"] else None,
           "identical": identical}
    line = json.dumps(res)
    print(line)
    if a.out:
        Path(a.out).write_text(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
