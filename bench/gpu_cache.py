"""The ``cache`` section of ``bench/gpu.py``: ``build_cache`` end to end on the gemma-2 shapes, with the
host work overlapped (issue 24) and synchronously, its ratio to the forwards, and byte comparisons."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

from gpu_setup import CORPUS, T0, register_corpus, sync  # bench/ is sys.path[0]


class _Enc:
    """The part of an encoded window the cache's batches read: ``ids`` and ``len``."""

    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)


def sec_cache(a, state) -> dict:
    """``build_cache`` end to end with the writer overlapped (``--queue-depth``, issue 24) at each batch
    size (``--host-workers`` threads for the host work), and at ``a.sync_batches`` also with queue depth 0
    and one host worker (the synchronous path, all in one thread, as ``gpu-h200.json``
    measured it; the time inside ``capture`` is measured on that row only, since timing a forward needs
    a synchronize that would stop the overlap). ``vs_forward``: end-to-end tokens/s over the ``forward``
    section's pair rate at the same batch; ``shards_identical``: the two builds' shard files, byte for byte."""
    import filecmp

    import h5py

    from stitchplug.cache import writer
    from stitchplug.cache.writer import build_cache

    register_corpus()
    out = {"corpus": CORPUS, "context_size": a.context_size, "storage_dtype": a.cache_dtype,
           "source_layer": a.source_layer, "target_layer": a.target_layer, "queue_depth": a.queue_depth,
           "host_workers": a.host_workers}
    src, tgt = state["source"], state["target"]
    inside = {"s": 0.0}

    def timed(ad):
        orig = ad.capture

        def capture(ids, layers):
            t = time.perf_counter()
            r = orig(ids, layers)
            sync(a.device)
            inside["s"] += time.perf_counter() - t
            return r
        return capture

    # the pinned non-blocking copy gives the bits of the old `.float().cpu()` (one batch of each model)
    from stitchplug.cache.plan import launch_batch

    g = torch.Generator().manual_seed(0)
    same = True
    for ad, layer in ((src, a.source_layer), (tgt, a.target_layer)):
        encs = [_Enc(torch.randint(4, len(ad.tokenizer), (n,), generator=g)) for n in (128, 77, 5)]
        got = launch_batch(ad, encs, [0, 1, 2], [layer]).result()
        ids = torch.zeros((3, 128), dtype=torch.long)
        for r, e in enumerate(encs):
            ids[r, :len(e)] = e.ids
        with torch.inference_mode():
            want = ad.capture(ids, [layer])[layer].float().cpu().numpy()
        same &= all(got[r][layer].tobytes() == want[r, :len(e)].tobytes() for r, e in enumerate(encs))
    out["pinned_copy_identical"] = bool(same)
    work = Path(tempfile.mkdtemp(prefix="stitchplug-gpu-", dir=a.work_dir))
    runs = [(bs, a.queue_depth) for bs in a.cache_batches] + [(bs, 0) for bs in a.sync_batches]
    try:
        for bs, depth in runs:
            key = f"batch_{bs}" + ("_sync" if depth == 0 else "")
            if time.perf_counter() - T0 > a.budget_s * 0.55:
                out[key] = {"skipped": "time budget"}
                continue
            if depth == 0:
                src.capture, tgt.capture = timed(src), timed(tgt)
            kw = dict(corpus=CORPUS, context_size=a.context_size, source_layers=[a.source_layer],
                      target_layers=[a.target_layer], dtype=a.cache_dtype, batch_size=bs, progress=False,
                      log=lambda m: None, queue_depth=depth, host_workers=a.host_workers if depth else 1)
            build_cache(work / f"warm{bs}.h5", src, tgt, tokens=max(256, a.cache_tokens // 8), **kw)
            shutil.rmtree(work / f"warm{bs}.h5.shards", ignore_errors=True)
            (work / f"warm{bs}.h5").unlink(missing_ok=True)
            writer.FORWARD_STATS.update(positions=0, tokens=0)
            inside["s"] = 0.0
            sync(a.device)
            t = time.perf_counter()
            path = build_cache(work / f"{key}.h5", src, tgt, tokens=a.cache_tokens, **kw)
            sync(a.device)
            s = time.perf_counter() - t
            if depth == 0:
                del src.capture, tgt.capture  # back to the class's method
            shards = sorted((work / f"{key}.h5.shards").glob("shard_*.h5"))
            disk = (work / f"{key}.h5").stat().st_size + sum(p.stat().st_size for p in shards)
            with h5py.File(path, "r") as f:
                rows = int(f.attrs["n_tokens"])
            st = writer.FORWARD_STATS
            row = {"tokens": rows, "queue_depth": depth, "host_workers": kw["host_workers"], "seconds": round(s, 2), "tokens_per_s": round(rows / s),
                   "bytes_on_disk": disk, "bytes_per_row": round(disk / max(rows, 1)),
                   "padding_ratio": round(st["positions"] / max(st["tokens"], 1), 3),
                   "disk_write_mb_per_s": round(disk / s / 1e6)}
            if depth == 0:
                row.update(seconds_in_capture=round(inside["s"], 2), share_in_capture=round(inside["s"] / s, 3))
            pair = state.get("forward", {}).get(f"batch_{bs}x{a.context_size}", {}).get("pair_tokens_per_s")
            if pair:
                row["vs_forward"] = round(rows / s / pair, 3)
            out[key] = row
            other = work / (f"batch_{bs}.h5.shards" if depth == 0 else f"batch_{bs}_sync.h5.shards")
            if other.exists():  # both builds of this batch size: compare them, then free the disk
                theirs = sorted(other.glob("shard_*.h5"))
                same = [p.name for p in shards] == [q.name for q in theirs] and all(
                    filecmp.cmp(p, q, shallow=False) for p, q in zip(shards, theirs))
                out[f"batch_{bs}_shards_identical"] = same
                for k in (key, other.name[:-len(".h5.shards")]):
                    shutil.rmtree(work / f"{k}.h5.shards", ignore_errors=True)
                    (work / f"{k}.h5").unlink(missing_ok=True)
            elif bs not in a.sync_batches or depth == 0:
                shutil.rmtree(work / f"{key}.h5.shards", ignore_errors=True)
                (work / f"{key}.h5").unlink(missing_ok=True)
    finally:
        for ad in (src, tgt):
            ad.__dict__.pop("capture", None)  # back to the class's method
        shutil.rmtree(work, ignore_errors=True)
    return out
