"""Write (or resume) a paired activation cache.

Crash safety: the work is cut into shards of whole documents. Each shard is written to
``shard_NNNNN.h5.tmp``, flushed, fsynced and atomically renamed, so a shard file with its final
name is always complete. The entry file (virtual datasets over the shards, plus the document
table and attributes) is written last, the same way, with ``complete = True``. A re-run skips
finished shards; shard boundaries and batch composition depend only on the configuration and the
corpus, so a resumed cache is bit-identical to an uninterrupted one.

Overlap: the host work of shard ``k`` (:meth:`_Writer.store_shard`) runs in a writer thread while
shard ``k + 1``'s forwards run, and documents are windowed ahead in another thread
(:mod:`~stitchplug.cache.overlap`); the bytes written do not depend on it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Callable, Iterable, Sequence

import h5py
import numpy as np

from .. import __version__, dist, interrupt
from ..adapter import ModelAdapter
from ..atomic import removing
from ..errors import CacheError
from . import integrity
from .align import fingerprint, get_aligner
from .corpus import corpus_fingerprint
from .format import (BF16_ATTR, FORMAT, FORMAT_VERSION, RESUME_FIELDS, SIDES, STORAGE_DTYPES,
                     config_diff, layer_key, open_h5, refuse_mismatch, shard_dir, stored_config)
from .hostwork import HOST_WORKERS, HostPool, PackedLayer
from .overlap import ShardWriter, read_ahead
from .plan import FORWARD_STATS, Acts, Doc, Shard, forward, group_shards, plan_docs  # noqa: F401 (FORWARD_STATS)

SHARD_BYTES = 64 * 2**20
QUEUE_DEPTH = 2
"""Default writer queue depth (shards); see :mod:`~stitchplug.cache.overlap`."""


def _fsync_replace(tmp: Path, final: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    dfd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class _Writer:
    def __init__(self, path: Path, source: ModelAdapter, target: ModelAdapter, cfg: dict, batch_size: int,
                 tick: Callable[[float], None], extra: dict | None = None):
        self.path, self.source, self.target, self.cfg = path, source, target, cfg
        self.batch_size, self.tick = batch_size, tick
        self.dir = shard_dir(path)
        self.extra = dict(extra or {})  # further shard attributes (e.g. the layer selection: a resume needs no probe)
        self.after_write: Callable[[int, Path], None] | None = None
        self.pool = HostPool(1)  # build_cache gives it cache.host_workers threads (and closes them)

    def shard_path(self, k: int) -> Path:
        return self.dir / f"shard_{k:05d}.h5"

    def run_shard(self, k: int, shard: Shard, ready: dict[str, dict[int, Acts]] | None = None) -> dict:
        """Both models' residuals for shard ``k``'s windows (``{side: [Acts per window]}``); ``ready[side]``
        holds windows a layer probe already ran in these same batches (see :func:`~stitchplug.cache.plan.forward`)."""
        cfg, n, ready = self.cfg, shard.rows, ready or {}
        wins = shard.windows()
        tokens_total = sum(len(w.source) + len(w.target) for _, w, _ in wins) or 1
        scale = n / tokens_total

        def tick(t):
            self.tick(t * scale)

        acts = {"source": forward(self.source, [w.source for _, w, _ in wins], cfg["source_layers"],
                                  self.batch_size, tick, ready.get("source"))}
        if self.target is self.source and cfg["target_layers"] == cfg["source_layers"] \
                and all(w.target is w.source for _, w, _ in wins):
            acts["target"] = acts["source"]  # one model and one set of hooks: one forward pass (same bits)
            tick(sum(len(w.target) for _, w, _ in wins))
        else:
            acts["target"] = forward(self.target, [w.target for _, w, _ in wins], cfg["target_layers"],
                                     self.batch_size, tick, ready.get("target"))
        return acts

    def write_shard(self, k: int, shard: Shard, ready: dict[str, dict[int, Acts]] | None = None) -> dict:
        """Run and write shard ``k`` in this thread (:meth:`run_shard`, then :meth:`store_shard`)."""
        return self.store_shard(k, shard, self.run_shard(k, shard, ready))

    def store_shard(self, k: int, shard: Shard, acts: dict) -> dict:
        """The host work of shard ``k`` (the writer thread's): gather the aligned rows, pack them to the
        storage dtype, write ``shard_k.h5.tmp``, store its digests, fsync and rename it final. The gather,
        packing and digests of the layers run on ``self.pool`` (:mod:`~stitchplug.cache.hostwork`)."""
        cfg, n = self.cfg, shard.rows
        wins = shard.windows()
        pieces = {side: {l: [] for l in cfg[f"{side}_layers"]} for side in SIDES}
        meta = {k2: [] for k2 in ("source/token_ids", "target/token_ids", "source/ends", "target/ends", "doc_ids")}
        for wi, (doc, w, keep) in enumerate(wins):
            ia, ib = w.idx_source[:keep], w.idx_target[:keep]
            for side, idx, enc in (("source", ia, w.source), ("target", ib, w.target)):
                for l in cfg[f"{side}_layers"]:
                    pieces[side][l].append((acts[side][wi][l], idx))
                meta[f"{side}/token_ids"].append(enc.ids.numpy()[idx].astype(np.int32))
                meta[f"{side}/ends"].append(enc.ends.numpy()[idx].astype(np.int32))
            meta["doc_ids"].append(np.full(len(ia), doc.index, dtype=np.int64))
        # every layer's gather and packing starts now on the pool (hostwork); the file is written in order
        packed = {(side, l): PackedLayer(self.pool, parts, self.source.d_model if side == "source" else self.target.d_model,
                                         cfg["dtype"], f"{side} layer {l} ({cfg[f'{side}_model']})")
                  for side in SIDES for l, parts in pieces[side].items()}
        digests: dict = {}
        final = self.shard_path(k)
        tmp = final.with_name(final.name + ".tmp")
        with removing(tmp), h5py.File(tmp, "w") as f:  # a full disk: one line, no .tmp left
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["config"] = json.dumps(cfg, sort_keys=True)
            f.attrs["shard"] = k
            f.attrs["rows"] = n
            for key, value in self.extra.items():
                f.attrs[key] = value
            for (side, l), layer in packed.items():
                name = f"{side}/{layer_key(l)}"
                ds = f.create_dataset(name, data=layer.array())  # its digest is computed meanwhile
                if cfg["dtype"] == "bfloat16":
                    ds.attrs[BF16_ATTR] = "bfloat16"
                digests[name] = layer
            for key, parts in meta.items():
                f.create_dataset(key, data=np.concatenate(parts) if parts else np.zeros(0, np.int64))
            f.create_dataset("docs/index", data=np.array([d.index for d in shard.docs], dtype=np.int64))
            f.create_dataset("docs/key", data=[d.key for d in shard.docs], dtype=h5py.string_dtype())
            f.create_dataset("docs/n_rows", data=np.array([d.rows for d in shard.docs], dtype=np.int64))
            f.create_dataset("docs/stats", data=np.array([[d.real[0], d.real[1], d.aligned] for d in shard.docs],
                                                         dtype=np.int64).reshape(-1, 3))
            digests = {name: layer.digest() for name, layer in digests.items()}
        integrity.stamp(tmp, digests)  # the layers' digests from memory; the small datasets' read back
        _fsync_replace(tmp, final)
        if self.after_write is not None:
            self.after_write(k, final)
        return {"path": final, "rows": n}

    @staticmethod
    def shard_info(path: Path) -> dict:
        with open_h5(path, "cache shard") as f:
            cfg = stored_config(f, path)
            return {"path": path, "config": cfg, "rows": int(f.attrs["rows"]),
                    "docs": f["docs/index"][()], "keys": [s.decode() if isinstance(s, bytes) else s
                                                          for s in f["docs/key"][()]],
                    "n_rows": f["docs/n_rows"][()], "stats": f["docs/stats"][()]}

    def write_entry(self, shards: list[dict], extra: dict) -> None:
        cfg = self.cfg
        n = sum(s["rows"] for s in shards)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with removing(tmp), h5py.File(tmp, "w") as f:  # a full disk: one line, no .tmp left
            names = [f"{side}/{layer_key(l)}" for side in SIDES for l in cfg[f"{side}_layers"]]
            names += ["source/token_ids", "target/token_ids", "source/ends", "target/ends", "doc_ids"]
            for name in names:
                with h5py.File(shards[0]["path"], "r") as s0:
                    dtype, tail = s0[name].dtype, s0[name].shape[1:]
                layout = h5py.VirtualLayout((n,) + tail, dtype=dtype)
                row = 0
                for s in shards:
                    if s["rows"]:
                        rel = os.path.relpath(s["path"], self.path.parent)
                        layout[row:row + s["rows"]] = h5py.VirtualSource(rel, name, shape=(s["rows"],) + tail)
                    row += s["rows"]
                vds = f.create_virtual_dataset(name, layout)
                if cfg["dtype"] == "bfloat16" and name.split("/")[-1].startswith("resid_pre_"):
                    vds.attrs[BF16_ATTR] = "bfloat16"
            n_rows = np.concatenate([s["n_rows"] for s in shards])
            f.create_dataset("docs/index", data=np.concatenate([s["docs"] for s in shards]))
            f.create_dataset("docs/key", data=[k for s in shards for k in s["keys"]], dtype=h5py.string_dtype())
            f.create_dataset("docs/n_rows", data=n_rows)
            f.create_dataset("docs/row_start", data=np.concatenate([[0], np.cumsum(n_rows)[:-1]]).astype(np.int64))
            stats = np.concatenate([s["stats"] for s in shards]).sum(0)
            attrs = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "config": json.dumps(cfg, sort_keys=True),
                "source_model": cfg["source_model"], "target_model": cfg["target_model"],
                "source_layers": np.array(cfg["source_layers"], dtype=np.int64),
                "target_layers": np.array(cfg["target_layers"], dtype=np.int64),
                "source_hooks": json.dumps([self.source.hook_name(l) for l in cfg["source_layers"]]),
                "target_hooks": json.dumps([self.target.hook_name(l) for l in cfg["target_layers"]]),
                "source_fingerprint": cfg["source_fingerprint"], "target_fingerprint": cfg["target_fingerprint"],
                "d_source": self.source.d_model, "d_target": self.target.d_model,
                "corpus": cfg["corpus"], "doc_start": cfg["doc_start"], "n_docs": len(n_rows),
                "max_docs": -1 if cfg["max_docs"] is None else cfg["max_docs"],
                "tokens_requested": cfg["tokens"], "n_tokens": n, "context_size": cfg["context_size"],
                "alignment_method": cfg["alignment_method"],
                "alignment_rate_source": float(stats[2] / max(stats[0], 1)),
                "alignment_rate_target": float(stats[2] / max(stats[1], 1)),
                "dtype": cfg["dtype"], "library_version": __version__, "shard_rows": cfg["shard_rows"],
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra, "complete": True,
            }
            for key, value in attrs.items():
                f.attrs[key] = value
        _fsync_replace(tmp, self.path)


def _resolve_layers(adapter: ModelAdapter, layers: Iterable[int] | None, default: list[int]) -> list[int]:
    out = sorted(set(int(l) for l in (default if layers is None else layers)))
    if not out:
        raise CacheError(f"no layers requested for model {adapter.name!r}")
    for l in out:
        adapter.check_layer(l)
    return out


def cache_config(source: ModelAdapter, target: ModelAdapter, *, corpus: str, doc_start: int, max_docs: int | None,
                 tokens: int, context_size: int, source_layers, target_layers, dtype: str, aligner: str,
                 shard_rows: int | None) -> dict:
    """The content config (see :data:`~stitchplug.cache.format.CONTENT_FIELDS`) of a cache for this pair."""
    la = _resolve_layers(source, source_layers, [source.n_layers // 2])
    lb = _resolve_layers(target, target_layers, list(range(target.n_layers)))
    fa, fb = fingerprint(source), fingerprint(target)
    method = aligner if aligner != "auto" else ("identity" if fa == fb else "end-offsets")
    if dtype not in STORAGE_DTYPES:
        raise CacheError(f"cache dtype must be one of {', '.join(STORAGE_DTYPES)}, not {dtype!r}")
    itemsize = 4 if dtype == "float32" else 2
    row_bytes = itemsize * (source.d_model * len(la) + target.d_model * len(lb)) + 24
    return {"format_version": FORMAT_VERSION, "source_model": source.name, "target_model": target.name,
            "source_layers": la, "target_layers": lb, "source_fingerprint": fa, "target_fingerprint": fb,
            "corpus": corpus, "corpus_fingerprint": corpus_fingerprint(corpus),
            "doc_start": int(doc_start), "max_docs": max_docs, "tokens": int(tokens),
            "context_size": int(context_size), "dtype": dtype, "alignment_method": method,
            "shard_rows": int(shard_rows or max(256, SHARD_BYTES // row_bytes)), "_row_bytes": row_bytes}


def check_existing(path: str | Path, wanted: dict) -> bool:
    """``True`` if ``path`` is a complete cache matching ``wanted`` (only the fields given are
    compared); ``False`` if it does not exist; :class:`CacheError` if foreign, corrupt, incomplete
    or built with a different configuration."""
    path = Path(path)
    if not path.exists():
        return False
    with open_h5(path) as f:
        stored = stored_config(f, path)
        if not f.attrs.get("complete", False):
            raise CacheError(f"{path} is an incomplete stitchplug cache; delete it and re-run")
    refuse_mismatch(path, stored, wanted)
    return True


def build_cache(path: str | Path, source: ModelAdapter, target: ModelAdapter, *, corpus: str = "wiki-en",
                doc_start: int = 0, max_docs: int | None = None, tokens: int = 200_000, context_size: int = 128,
                source_layers: Iterable[int] | None = None, target_layers: Iterable[int] | None = None,
                dtype: str = "float32", batch_size: int = 8, aligner: str = "auto", eval_fraction: float = 0.1,
                split_seed: int = 0, shard_rows: int | None = None, progress: bool = True,
                log: Callable[[str], None] | None = None, corpus_cache_dir: str | None = None,
                extra_attrs: dict | None = None, planned: Sequence[Doc] | None = None,
                ready: dict[int, dict[str, dict[int, Acts]]] | None = None, queue_depth: int = QUEUE_DEPTH,
                after_write: Callable[[int, Path], None] | None = None, host_workers: int = HOST_WORKERS) -> Path:
    """Build the paired cache at ``path`` (an ``.h5`` entry file), resuming finished shards.

    Returns ``path``. An existing complete cache with the same content config is reused as is;
    one with a different config is refused (:class:`CacheError` naming the fields).
    ``eval_fraction``/``split_seed`` are stored as the reader's default document split;
    ``extra_attrs`` are written as further attributes of the entry file and of each shard written (not
    part of their identity).
    Under torchrun, shard ``k`` is written by rank ``k % world_size`` and rank 0 writes the entry.

    ``planned``: the slice's leading documents already windowed (:func:`~stitchplug.cache.plan.plan_docs`
    with these settings), used instead of tokenising them again; ``ready``: per shard and side, windows a
    layer probe already ran in the writer's own batches (:mod:`stitchplug.cache.select`).

    ``queue_depth``: shards that may wait for the writer thread while the next shard's forwards run
    (and shards windowed ahead); 0 runs everything in this thread, in order (:mod:`~stitchplug.cache.overlap`).
    The bytes written are the same at every depth, so it is not part of the cache's identity.
    ``host_workers``: threads that gather, pack and digest a shard's layers (1: the writer thread alone;
    :mod:`~stitchplug.cache.hostwork`); the bytes are the same for any number, so it is not part of the identity either.
    ``after_write(k, path)`` is called by the writer (thread) after shard ``k`` is final on disk.
    """
    from ..progress import progress as progress_bar

    from .corpus import open_corpus

    log = log or (lambda msg: print(msg, file=sys.stderr))
    path = Path(path)
    cfg = cache_config(source, target, corpus=corpus, doc_start=doc_start, max_docs=max_docs, tokens=tokens,
                       context_size=context_size, source_layers=source_layers, target_layers=target_layers,
                       dtype=dtype, aligner=aligner, shard_rows=shard_rows)
    row_bytes = cfg.pop("_row_bytes")
    if int(host_workers) < 1:
        raise CacheError(f"cache host_workers must be at least 1, not {host_workers}")
    if check_existing(path, cfg) and integrity.first_bad_shard(path) is None:
        log(f"cache {path} is complete, matches and its shards verify; reusing it")
        return path
    _, align = get_aligner(cfg["alignment_method"], source, target)
    rank, world = dist.rank_world()
    sdir = shard_dir(path)
    sdir.mkdir(parents=True, exist_ok=True)
    lock = open(sdir / (".lock" if rank == 0 else f".lock.rank{rank}"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CacheError(f"another stitchplug process is writing {path}") from None
    writer = None
    try:
        cfg["batch_size"] = int(batch_size)  # shards only: a finished cache is reused at any batch size
        writer = _Writer(path, source, target, cfg, batch_size, lambda t: None, extra_attrs)
        writer.pool = HostPool(host_workers)
        if rank == 0:  # repairs touch every rank's shards: one rank does them while the others wait
            for stale in sdir.glob("*.tmp"):
                stale.unlink()
            bad = integrity.first_bad_shard(path)
            if bad is not None:
                n = integrity.drop_from(path, bad[0])
                log(f"shard {bad[1].name} {bad[2]}; rewriting it and the {n - 1} shard(s) after it")
        dist.barrier()
        done: list[dict] = []
        while writer.shard_path(len(done)).exists():
            info = writer.shard_info(writer.shard_path(len(done)))
            refuse_mismatch(writer.shard_path(len(done)), info["config"], cfg, RESUME_FIELDS)
            done.append(info)
        rows_done = sum(s["rows"] for s in done)
        docs_done = sum(len(s["docs"]) for s in done)
        need = max(0, tokens - rows_done) * row_bytes
        free = shutil.disk_usage(sdir).free
        log(f"cache {path}: {tokens:,} tokens x {row_bytes:,} bytes = {need / 2**20:,.1f} MiB still to write "
            f"({free / 2**20:,.0f} MiB free)" + (f"; resuming after {rows_done:,} tokens" if done else "")
            + (f"; rank {rank} of {world} writes shards k with k % {world} == {rank}" if world > 1 else ""))
        if need * 1.05 + 2**20 > free:
            raise CacheError(f"not enough disk space for cache {path}: needs {need / 2**20:,.1f} MiB, "
                             f"{free / 2**20:,.1f} MiB free")
        bar = progress_bar(total=tokens, initial=rows_done, unit="tok", unit_scale=True, desc="cache",
                           enabled=progress and rank == 0, dynamic_ncols=True, file=sys.stderr)
        kept: list[int] = []
        sink = ShardWriter(writer.store_shard, queue_depth)

        def tick(t: float) -> None:  # after every forward batch: the progress bar, and a failed writer stops the run
            interrupt.check()
            sink.check()
            bar.update(t)

        writer.tick, writer.after_write = tick, after_write

        def documents():
            """The slice's documents after the finished shards: planned ones first, then the corpus."""
            total = rows_done
            for d in (planned or [])[docs_done:]:
                yield d
                total += d.rows
            start = max(docs_done, len(planned or []))
            limit = None if max_docs is None else max_docs - start
            if total < tokens and (limit is None or limit > 0):
                records = open_corpus(corpus, start=doc_start + start, limit=limit, cache_dir=corpus_cache_dir)
                yield from plan_docs(records, source, target, context_size, align, tokens=tokens, total=total,
                                     index0=doc_start + start)

        def flush(k: int, shard: Shard) -> None:
            """Shard ``k`` is rank ``k % world``'s; one that a killed run finished is verified and kept."""
            if k % world != rank:
                return
            final = writer.shard_path(k)
            if final.exists():
                if integrity.verify_shard(final) is None and not config_diff(
                        writer.shard_info(final)["config"], cfg, RESUME_FIELDS):
                    kept.append(k)
                    return
                final.unlink()
            sink.submit(k, shard, writer.run_shard(k, shard, (ready or {}).get(k)))

        # Shard boundaries depend only on the config and the corpus: every rank windows every document
        # (tokenising is cheap next to the forwards, and runs ahead in its own thread) and runs the
        # models on its own shards only; the writer thread stores shard k while shard k + 1 runs.
        n_shards, total = len(done), rows_done
        with sink, closing(read_ahead(group_shards(documents(), cfg["shard_rows"]), queue_depth)) as shards:
            for shard in shards:
                flush(n_shards, shard)
                n_shards, total = n_shards + 1, total + shard.rows
        bar.close()
        if kept:
            log(f"rank {rank}: kept {len(kept)} shard(s) that an interrupted run finished")
        if n_shards == 0 or total == 0:
            raise CacheError(f"corpus {corpus!r} gave no aligned tokens for this slice")
        if total < tokens:
            log(f"corpus slice ended after {total:,} of {tokens:,} requested tokens")
        dist.barrier()  # every rank's shards are on disk
        if rank == 0:
            infos = [writer.shard_info(writer.shard_path(k)) for k in range(n_shards)]
            writer.write_entry(infos, {"eval_fraction": float(eval_fraction), "split_seed": int(split_seed),
                                       **(extra_attrs or {})})
        dist.barrier()  # the entry file exists on return, on every rank
    finally:
        if writer is not None:
            writer.pool.close()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    return path
