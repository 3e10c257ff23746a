"""The paired HDF5 cache: layout, masking, resume after SIGKILL (bit-identical), refusals, reader."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from stitchplug.cache.reader import open_cache
from stitchplug.cache.writer import build_cache
from stitchplug.errors import CacheError
from stitchplug.adapter import load_model

TESTS = Path(__file__).parent
SOURCE, TARGET = "tiny-llama-a", "tiny-gemma3"  # different tokenizers (byte-level BPE vs SentencePiece-style)
KW = dict(tokens=1200, context_size=48, source_layers=[0, 1], target_layers=[0, 2], shard_rows=200, batch_size=4,
          progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def pair():
    return load_model(SOURCE), load_model(TARGET)


@pytest.fixture(scope="module")
def built(root, pair):
    return build_cache(root / "ref" / "c.h5", *pair, **KW)


def _all_arrays(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_layout_is_plain_h5py(built, pair):
    a, b = pair
    with h5py.File(built, "r") as f:
        n = f.attrs["n_tokens"]
        assert n == 1200
        for l in (0, 1):
            assert f[f"source/resid_pre_{l}"].shape == (n, a.d_model)
        for l in (0, 2):
            assert f[f"target/resid_pre_{l}"].shape == (n, b.d_model)
        for name in ("source/token_ids", "target/token_ids", "source/ends", "target/ends", "doc_ids"):
            assert f[name].shape == (n,)
        # aligned rows end at the same character on both sides, and are never special tokens
        assert np.array_equal(f["source/ends"][()], f["target/ends"][()])
        assert not np.isin(f["source/token_ids"][()], list(a.special_ids)).any()
        assert not np.isin(f["target/token_ids"][()], list(b.special_ids)).any()
        attrs = dict(f.attrs)
    for key in ("source_model", "target_model", "source_layers", "target_layers", "source_hooks", "target_hooks",
                "source_fingerprint", "target_fingerprint", "corpus", "doc_start", "alignment_method",
                "alignment_rate_source", "alignment_rate_target", "dtype", "context_size", "library_version",
                "format_version", "complete"):
        assert key in attrs, key
    assert attrs["alignment_method"] == "end-offsets" and attrs["corpus"] == "wiki-en"
    assert json.loads(attrs["target_hooks"]) == ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_pre"]
    assert 0.5 < attrs["alignment_rate_source"] <= 1 and 0.5 < attrs["alignment_rate_target"] <= 1


def test_cached_rows_equal_an_unbatched_forward(built, pair):
    """Batched right-padded forwards give the same activations as one window alone."""
    from stitchplug.cache.corpus import open_corpus
    from stitchplug.cache.windows import paired_windows

    a, b = pair
    doc = next(iter(open_corpus("wiki-en", start=1, limit=1)))
    w = paired_windows(doc["text"], a, b, 48)[0]
    with open_cache(built) as c:
        rows = np.flatnonzero(c.array("doc_ids", "doc_ids") == 1)[:len(w.idx_source)]
        got_a, got_b = c.array("source", 1)[rows], c.array("target", 2)[rows]
    want_a = a.capture(w.source.ids[None], [1])[1][0, w.idx_source].numpy()
    want_b = b.capture(w.target.ids[None], [2])[2][0, w.idx_target].numpy()
    np.testing.assert_allclose(got_a, want_a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_b, want_b, rtol=1e-4, atol=1e-5)


def _cli_args(out):
    return [sys.executable, "-m", "stitchplug.cli", "cache", "--models-source", SOURCE, "--models-target", TARGET,
            "--output", str(out), "--no-progress", "--cache-tokens", str(KW["tokens"]),
            "--cache-context-size", str(KW["context_size"]), "--cache-batch-size", str(KW["batch_size"]),
            "--cache-source-layers", ",".join(map(str, KW["source_layers"])),
            "--cache-target-layers", ",".join(map(str, KW["target_layers"])),
            "--shard-rows", str(KW["shard_rows"])]


def test_sigkill_then_resume_is_bit_identical(root, built):
    """SIGKILL the `stitchplug cache` command mid-run, re-run it: every array equals an uninterrupted run."""
    out = root / "killed" / "c.h5"
    proc = subprocess.Popen(_cli_args(out), stderr=subprocess.DEVNULL)
    shards = out.with_name("c.h5.shards")
    deadline = time.time() + 120
    while len(list(shards.glob("shard_*.h5"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the cache finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # a killed build never leaves an entry file that could be read
    with pytest.raises(CacheError):
        open_cache(out)
    n_before = len(list(shards.glob("shard_*.h5")))
    res = subprocess.run(_cli_args(out), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming after" in res.stderr and n_before >= 2
    got, want = _all_arrays(out), _all_arrays(built)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        if got[name].dtype == object:
            assert got[name].tolist() == want[name].tolist(), name
        else:
            assert got[name].tobytes() == want[name].tobytes(), name


def test_mismatched_cache_is_refused_naming_the_field(built, pair):
    with pytest.raises(CacheError, match=r"context_size \(cached 48, requested 64\)"):
        build_cache(built, *pair, **{**KW, "context_size": 64})
    mtime = built.stat().st_mtime_ns
    assert build_cache(built, *pair, **KW) == built  # same config: reused untouched
    assert built.stat().st_mtime_ns == mtime


def test_foreign_and_corrupt_files_give_one_line_cli_error(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 10)
    res = subprocess.run([sys.executable, "-m", "stitchplug.cli", "cache", "--output", str(foreign)],
                         capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert lines[0].startswith("Error:") and "not a stitchplug paired activation cache" in lines[0]
    for path, msg in ((foreign, "not a stitchplug paired activation cache"), (corrupt, "not a readable HDF5")):
        with pytest.raises(CacheError, match=msg) as err:
            open_cache(path)
        assert "\n" not in str(err.value)


def test_float16_refuses_overflow_and_stores_normal_values(root, pair, built):
    a, b = pair
    big = load_model(TARGET)
    with torch.no_grad():
        big.model.embed.W_E.mul_(1e6)  # residuals far beyond float16's 65,504
    kw = {**KW, "tokens": 300, "dtype": "float16"}
    with pytest.raises(CacheError, match=r"float16 cannot store target layer 0"):
        build_cache(root / "f16bad" / "c.h5", a, big, **kw)
    p = build_cache(root / "f16" / "c.h5", a, b, **kw)
    with open_cache(p) as c, open_cache(built) as ref:
        x16 = c.array("target", 2)
        assert x16.dtype == np.float16
        np.testing.assert_array_equal(x16, ref.array("target", 2)[:300].astype(np.float16))


def test_incomplete_entry_file_is_refused(built, tmp_path):
    import shutil

    copy = tmp_path / "c.h5"
    shutil.copy(built, copy)
    with h5py.File(copy, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(copy)


def test_reader_split_is_by_document_and_batches_are_deterministic(built):
    with open_cache(built) as c:
        docs = c.array("doc_ids", "doc_ids")
        train, ev = c.array("doc_ids", "doc_ids", "train"), c.array("doc_ids", "doc_ids", "eval")
        assert len(train) + len(ev) == c.n_tokens and len(ev) > 0
        assert not set(train) & set(ev)
        assert set(train) | set(ev) == set(docs)
        assert set(ev) == set(c.eval_docs())

        def run(seed, **kw):
            return [tuple(t.clone() for t in b) for b in
                    c.batches([("source", 1), ("target", None), ("doc_ids", "doc_ids")], batch_size=128,
                              seed=seed, chunk_rows=256, buffer_chunks=2, **kw)]

        first, again, other = run(0), run(0), run(1)
        assert len(first) == len(again) and all(torch.equal(x, y) for p, q in zip(first, again) for x, y in zip(p, q))
        assert not torch.equal(first[0][0], other[0][0])
        assert all(len(b[0]) == 128 for b in first[:-1]) and first[0][0].dtype == torch.float32
        assert first[0][1].shape[1] == c.d_target
        # every training row exactly once per epoch, rows stay paired across keys
        src = torch.cat([b[0] for b in first]).numpy()
        ref = c.array("source", 1, "train")
        assert len(src) == len(ref)
        assert np.array_equal(np.sort(src[:, 0]), np.sort(ref[:, 0]))
        assert not set(torch.cat([b[2] for b in first]).tolist()) & set(ev)
        ordered = torch.cat([b[0] for b in c.batches([("source", 1)], 100, shuffle=False)]).numpy()
        assert np.array_equal(ordered, ref)
        assert sum(len(b[0]) for b in c.batches([("source", 0)], 100, split="eval", epochs=2)) == 2 * len(ev)
    with open_cache(built, split_seed=5) as c2:
        assert not np.array_equal(c2.eval_docs(), c.eval_docs()) or len(c.doc_index) < 3


def test_moved_cache_reads_the_same_and_h5py_fallback_matches_memmap(built, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(built, moved / built.name)
    shutil.copytree(built.with_name(built.name + ".shards"), moved / (built.name + ".shards"))
    with open_cache(built) as c, open_cache(moved / built.name) as m:
        ref = c.array("target", 2)
        assert np.array_equal(m.array("target", 2), ref)
        fast = [b[0] for b in m.batches([("target", 2)], 97, split=None, seed=3)]
        m._segment_cache["target/resid_pre_2"] = None  # force the plain-h5py read path
        slow = [b[0] for b in m.batches([("target", 2)], 97, split=None, seed=3)]
        assert len(fast) == len(slow) and all(torch.equal(x, y) for x, y in zip(fast, slow))
        assert np.array_equal(np.sort(torch.cat(fast).numpy()[:, 0]), np.sort(ref[:, 0]))
    shutil.rmtree(moved / (built.name + ".shards"))
    with pytest.raises(CacheError, match="missing"):
        open_cache(moved / built.name)
