"""Read a paired activation cache: metadata, a document-level train/eval split, small array reads
and a streaming, deterministically shuffled batch iterator that never loads the whole cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
import torch

from ..errors import CacheError
from .format import SIDES, bfloat16_to_float32, is_bfloat16, layer_key, open_h5, stored_config

Key = tuple[str, "int | str"]


def eval_positions(n: int, eval_fraction: float, split_seed: int) -> np.ndarray:
    """Positions (in the cache's document order) of the held-out documents among ``n``."""
    n_eval = int(round(eval_fraction * n))
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(n_eval, 1), n - 1)
    return np.random.default_rng(split_seed).permutation(n)[:n_eval]


class PairedCache:
    """An open, complete cache. Use :func:`open_cache` to get one; close it (or use ``with``)."""

    def __init__(self, path: str | Path, eval_fraction: float | None = None, split_seed: int | None = None):
        self.path = Path(path)
        self.file = open_h5(self.path)
        try:
            self.config = stored_config(self.file, self.path)
            if "shard" in self.file.attrs:
                raise CacheError(f"{self.path} is one shard of a stitchplug cache, not the cache itself; pass the "
                                 f"cache's entry file (the .h5 next to the .shards folder)")
            if not bool(self.file.attrs.get("complete", False)):
                raise CacheError(f"{self.path} is an incomplete stitchplug cache (its build did not finish); "
                                 f"re-run `stitchplug cache` to complete it")
            self.attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.file.attrs.items()}
            docs = self.file["docs"]
            self.doc_index = docs["index"][()]
            self.doc_rows = docs["n_rows"][()]
            self.doc_start_row = docs["row_start"][()]
            for name in self.dataset_names():
                ds = self.file[name]
                if ds.shape[0] != self.n_tokens:
                    raise CacheError(f"{self.path}: dataset {name} has {ds.shape[0]} rows, expected {self.n_tokens}")
                if ds.is_virtual:
                    for vs in ds.virtual_sources():
                        src = (self.path.parent / vs.file_name)
                        if not src.exists():
                            if src.parent.is_dir():
                                raise CacheError(f"{self.path}: shard {src.name} is missing from {src.parent}; "
                                                 f"re-run `stitchplug cache` with the same settings to rebuild it")
                            raise CacheError(f"{self.path}: its shards folder {src.parent} is missing (move the "
                                             f".shards folder together with the cache file)")
        except CacheError:
            self.file.close()
            raise
        except KeyError as exc:
            self.file.close()
            raise CacheError(f"{self.path} is a corrupt stitchplug cache (missing {exc})") from None
        self._segment_cache: dict[str, list | None] = {}
        self.eval_fraction = float(self.attrs.get("eval_fraction", 0.1) if eval_fraction is None else eval_fraction)
        self.split_seed = int(self.attrs.get("split_seed", 0) if split_seed is None else split_seed)
        if not 0.0 <= self.eval_fraction < 1.0:
            raise CacheError(f"eval_fraction must be in [0, 1), not {self.eval_fraction}")

    # -- metadata -------------------------------------------------------------------------
    def dataset_names(self) -> list[str]:
        names = [f"{s}/{layer_key(l)}" for s in SIDES for l in self.layers(s)]
        return names + ["source/token_ids", "target/token_ids", "source/ends", "target/ends", "doc_ids"]

    def layers(self, side: str) -> list[int]:
        return list(self.config[f"{self._side(side)}_layers"])

    @property
    def source_layers(self) -> list[int]:
        return self.layers("source")

    @property
    def target_layers(self) -> list[int]:
        return self.layers("target")

    @property
    def d_source(self) -> int:
        return int(self.attrs["d_source"])

    @property
    def d_target(self) -> int:
        return int(self.attrs["d_target"])

    @property
    def n_tokens(self) -> int:
        return int(self.attrs["n_tokens"])

    @property
    def source_model(self) -> str:
        return str(self.attrs["source_model"])

    @property
    def target_model(self) -> str:
        return str(self.attrs["target_model"])

    @property
    def alignment_rate(self) -> tuple[float, float]:
        """Share of each side's non-special tokens that were kept (source, target)."""
        return float(self.attrs["alignment_rate_source"]), float(self.attrs["alignment_rate_target"])

    def hook_names(self, side: str) -> list[str]:
        return json.loads(self.attrs[f"{self._side(side)}_hooks"])

    # -- split ----------------------------------------------------------------------------
    def eval_docs(self) -> np.ndarray:
        """Corpus indices of the held-out documents: a seeded random ``eval_fraction`` of the
        cache's documents (at least one when the fraction is positive and there are >= 2 documents)."""
        return np.sort(self.doc_index[eval_positions(len(self.doc_index), self.eval_fraction, self.split_seed)])

    def doc_keys(self, split: str | None = None) -> list[str]:
        """The corpus ``doc_id`` of each cached document of ``split`` ('train', 'eval' or None for all),
        in cache order (a ``mix:`` corpus's ids carry their component: ``wiki-fr:Paris``)."""
        if split not in (None, "train", "eval"):
            raise CacheError(f"split must be 'train', 'eval' or None, not {split!r}")
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in self.file["docs/key"][()]]
        if split is None:
            return keys
        is_eval = np.isin(self.doc_index, self.eval_docs())
        return [k for k, e in zip(keys, is_eval) if bool(e) == (split == "eval")]

    def ranges(self, split: str | None = None) -> list[tuple[int, int]]:
        """Row ranges ``[start, stop)`` of ``split`` ('train', 'eval' or None for all), merged."""
        if split is None:
            return [(0, self.n_tokens)] if self.n_tokens else []
        if split not in ("train", "eval"):
            raise CacheError(f"split must be 'train', 'eval' or None, not {split!r}")
        is_eval = np.isin(self.doc_index, self.eval_docs())
        pick = is_eval if split == "eval" else ~is_eval
        out: list[list[int]] = []
        for start, n in zip(self.doc_start_row[pick], self.doc_rows[pick]):
            if n == 0:
                continue
            if out and out[-1][1] == start:
                out[-1][1] = int(start + n)
            else:
                out.append([int(start), int(start + n)])
        return [tuple(r) for r in out]

    def rows(self, split: str | None = None) -> np.ndarray:
        """Row indices of ``split`` (int64)."""
        return np.concatenate([np.arange(a, b) for a, b in self.ranges(split)] or [np.zeros(0, np.int64)])

    # -- reads ----------------------------------------------------------------------------
    @staticmethod
    def _side(side: str) -> str:
        if side not in SIDES:
            raise CacheError(f"side must be 'source' or 'target', not {side!r}")
        return side

    def dataset_name(self, side: str, layer: int | str) -> str:
        """``/source/resid_pre_{l}`` for an int layer; ``/source/token_ids`` etc. for a name;
        ``doc_ids`` for ``side == 'doc_ids'``."""
        if side == "doc_ids":
            return "doc_ids"
        self._side(side)
        if isinstance(layer, (int, np.integer)):
            if int(layer) not in self.layers(side):
                raise CacheError(f"layer {layer} of the {side} model is not in the cache "
                                 f"(cached: {self.layers(side)})")
            return f"{side}/{layer_key(layer)}"
        name = f"{side}/{layer}"
        if name not in self.file:
            raise CacheError(f"the cache has no dataset {name!r}")
        return name

    def array(self, side: str, layer: int | str, split: str | None = None) -> np.ndarray:
        """All rows of one dataset for ``split`` as a numpy array (for small caches / samples)."""
        ds = self.file[self.dataset_name(side, layer)]
        parts = [ds[a:b] for a, b in self.ranges(split)]
        out = np.concatenate(parts) if parts else np.zeros((0,) + ds.shape[1:], ds.dtype)
        return bfloat16_to_float32(out) if is_bfloat16(ds) else out

    def _segments(self, name: str) -> list[tuple[int, int, np.ndarray]] | None:
        """``(row_start, row_stop, array)`` pieces of a dataset as zero-copy ``numpy.memmap`` views of
        the (contiguous, uncompressed) datasets in the shard files; ``None`` if some piece is not
        memory-mappable (then reads go through h5py)."""
        if name in self._segment_cache:
            return self._segment_cache[name]
        ds = self.file[name]

        def mapped(path: Path, d) -> np.ndarray | None:
            off = d.id.get_offset()
            if off is None or d.chunks is not None or d.compression is not None or d.shape[0] == 0:
                return None
            try:
                return np.memmap(path, dtype=d.dtype, mode="r", offset=off, shape=d.shape)
            except (ValueError, OSError) as exc:  # e.g. a truncated shard: "mmap length is greater than file size"
                raise CacheError(f"{self.path}: shard {path.name} cannot be read ({exc}); "
                                 f"run `stitchplug cache --verify` and re-run `stitchplug cache` to rewrite it") from None

        if not ds.is_virtual:
            arr = mapped(self.path, ds)
            segs = None if arr is None else [(0, ds.shape[0], arr)]
            self._segment_cache[name] = segs
            return segs
        dcpl = ds.id.get_create_plist()
        segs = []
        for i in range(dcpl.get_virtual_count()):
            (r0, *_), (r1, *_) = dcpl.get_virtual_vspace(i).get_select_bounds()
            src = self.path.parent / dcpl.get_virtual_filename(i)
            with open_h5(src, "cache shard") as f:
                arr = mapped(src, f[dcpl.get_virtual_dsetname(i)])
            if arr is None or arr.shape[0] != r1 - r0 + 1:
                segs = None
                break
            segs.append((int(r0), int(r1) + 1, arr))
        segs = None if segs is None else sorted(segs, key=lambda t: t[0])
        self._segment_cache[name] = segs
        return segs

    def _gatherer(self, name: str):
        """``rows (sorted int64) -> np.ndarray``: one copy from the page cache per row (bfloat16
        datasets are widened to float32)."""
        raw = self._raw_gatherer(name)
        if is_bfloat16(self.file[name]):
            return lambda rows: bfloat16_to_float32(raw(rows))
        return raw

    def _raw_gatherer(self, name: str):
        ds = self.file[name]
        segs = self._segments(name)
        if segs is None:
            return lambda rows: ds[rows] if len(rows) else np.zeros((0,) + ds.shape[1:], ds.dtype)
        starts = np.array([a for a, _, _ in segs])

        def gather(rows: np.ndarray) -> np.ndarray:
            out = np.empty((len(rows),) + ds.shape[1:], dtype=ds.dtype)
            which = np.searchsorted(starts, rows, side="right") - 1
            bounds = np.searchsorted(which, np.arange(len(segs) + 1))  # rows are sorted
            for j, (a, _, arr) in enumerate(segs):
                lo, hi = bounds[j], bounds[j + 1]
                if hi > lo:
                    np.take(arr, rows[lo:hi] - a, axis=0, out=out[lo:hi], mode="clip")  # rows are in range
            return out

        return gather

    def batches(self, keys: Sequence[Key] = (("source", None), ("target", None)), batch_size: int = 1024,
                split: str | None = "train", seed: int = 0, shuffle: bool = True, epochs: int = 1,
                dtype: torch.dtype = torch.float32, chunk_rows: int = 4096, buffer_chunks: int = 8,
                drop_last: bool = False, part: tuple[int, int] | None = None,
                across_epochs: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
        """Stream ``(tensor_per_key, ...)`` batches of aligned rows.

        ``keys`` are ``(side, layer)`` pairs (``layer=None``: the side's first cached layer; a string
        such as ``"token_ids"`` reads that dataset). Shuffling is deterministic in ``seed`` and the
        epoch: contiguous chunks of ``chunk_rows`` rows are taken in a permuted order, ``buffer_chunks``
        at a time, and rows are permuted inside that buffer window. Rows are copied once, straight
        from memory-mapped shard files into each batch; memory never holds more than a batch.
        The last batch of an epoch may be smaller unless ``drop_last``.

        ``part=(rank, world_size)`` (data parallel): every rank walks the same global batches and
        gets rows ``rank::world_size`` of each (sorted), so ranks together see exactly the batches of
        one process with the same ``batch_size``, each reading only its share.

        ``across_epochs``: every batch has exactly ``batch_size`` rows: the rows of the epochs are cut
        as one stream (the batches above, concatenated), so a batch may end one epoch and start the
        next, and a last remainder shorter than ``batch_size`` is dropped. These are the batches a
        consumer that concatenates and re-cuts the plain batches sees (the SAE trainer's ``rebatch``);
        with ``part`` the ranks' shares then always have equal sizes.
        """
        if batch_size < 1:
            raise CacheError(f"batch_size must be positive, not {batch_size}")
        names = [self.dataset_name(side, self.layers(side)[0] if layer is None and side != "doc_ids" else layer)
                 for side, layer in keys]
        gathers = [self._gatherer(n) for n in names]
        chunks = [(s, min(s + chunk_rows, b)) for a, b in self.ranges(split) for s in range(a, b, chunk_rows)]

        def batch(rows: np.ndarray) -> tuple[torch.Tensor, ...]:
            rows = np.sort(rows)  # sequential access; order inside a batch does not matter for training
            if part is not None:
                rows = rows[part[0]::part[1]]
            out = tuple(self._tensor(g(rows), dtype) for g in gathers)
            for name, t in zip(names, out):
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise CacheError(f"{self.path}: {name} holds non-finite values in rows {rows[0]}..{rows[-1]} "
                                     f"(a corrupt shard?); run `stitchplug cache --verify`")
            return out

        def row_batches() -> Iterator[np.ndarray]:
            for epoch in range(epochs):
                rng = np.random.default_rng([seed, epoch])
                order = rng.permutation(len(chunks)) if shuffle else np.arange(len(chunks))
                carry = np.zeros(0, dtype=np.int64)
                for g in range(0, len(order), buffer_chunks):
                    group = sorted(int(i) for i in order[g:g + buffer_chunks])
                    rows = np.concatenate([carry] + [np.arange(*chunks[i], dtype=np.int64) for i in group])
                    if shuffle:
                        rows = rows[rng.permutation(len(rows))]
                    full = len(rows) - len(rows) % batch_size
                    for s in range(0, full, batch_size):
                        yield np.sort(rows[s:s + batch_size])
                    carry = rows[full:]
                if len(carry) and (across_epochs or not drop_last):
                    yield np.sort(carry)

        if not across_epochs:
            for rows in row_batches():
                yield batch(rows)
            return
        buf = np.zeros(0, dtype=np.int64)
        for rows in row_batches():  # re-cut the stream of sorted batches into full batches
            buf = np.concatenate([buf, rows])
            while len(buf) >= batch_size:
                yield batch(buf[:batch_size])
                buf = buf[batch_size:]

    @staticmethod
    def _tensor(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.to(dtype) if t.is_floating_point() else t

    def close(self) -> None:
        self._segment_cache.clear()
        self.file.close()

    def __enter__(self) -> "PairedCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_cache(path: str | Path, eval_fraction: float | None = None, split_seed: int | None = None) -> PairedCache:
    """Open and validate a complete cache (:class:`CacheError` on foreign, corrupt or incomplete files).

    ``eval_fraction``/``split_seed`` override the document split stored at build time.
    """
    return PairedCache(path, eval_fraction=eval_fraction, split_seed=split_seed)
