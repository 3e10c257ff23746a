"""Caches prove their integrity: per-dataset digests in every shard, `stitchplug cache --verify`,
rewriting of bad shards on the next build, and one-line errors (never garbage) on read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from stitchplug.adapter import load_model
from stitchplug.cache.integrity import DIGEST_ATTR, shard_files, verify_cache
from stitchplug.cache.reader import open_cache
from stitchplug.cache.writer import build_cache
from stitchplug.errors import CacheError

KW = dict(tokens=1200, context_size=48, source_layers=[0, 1], target_layers=[0, 2], shard_rows=200, batch_size=4,
          progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def pair():
    return load_model("tiny-llama-a"), load_model("tiny-gemma3")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pair):
    return build_cache(tmp_path_factory.mktemp("ref") / "c.h5", *pair, **KW)


@pytest.fixture
def cache(reference, tmp_path):
    """A private copy of the reference cache to damage."""
    dst = tmp_path / "c.h5"
    shutil.copy(reference, dst)
    shutil.copytree(reference.with_name("c.h5.shards"), tmp_path / "c.h5.shards")
    return dst


def arrays(path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_cache(a, b) -> None:
    xa, xb = arrays(a), arrays(b)
    assert sorted(xa) == sorted(xb)
    for name in xa:
        assert np.array_equal(xa[name], xb[name]), name


def flip_bytes(shard, dataset="target/resid_pre_2", n=1024) -> None:
    with h5py.File(shard, "r") as f:
        off, size = f[dataset].id.get_offset(), f[dataset].id.get_storage_size()
    with open(shard, "r+b") as fh:
        fh.seek(off + size // 2)
        block = bytearray(fh.read(n))
        fh.seek(off + size // 2)
        fh.write(bytes(b ^ 0x5A for b in block))


def cli_verify(cache_path):
    return subprocess.run([sys.executable, "-m", "stitchplug.cli", "cache", "--verify", "--output", str(cache_path)],
                          capture_output=True, text=True, timeout=120)


def test_every_shard_carries_digests_and_a_fresh_cache_verifies(cache):
    shards = shard_files(cache)
    assert len(shards) >= 5
    for s in shards:
        with h5py.File(s, "r") as f:
            assert DIGEST_ATTR in f.attrs
    assert verify_cache(cache) == {}
    res = cli_verify(cache)
    assert res.returncode == 0 and f"{len(shards)} of {len(shards)} shards verified" in res.stdout


def test_flipped_bytes_are_named_then_rewritten_bit_identical(cache, reference, pair):
    bad = shard_files(cache)[2]
    flip_bytes(bad)
    problems = verify_cache(cache)
    assert list(problems) == [bad] and "does not match its digest" in problems[bad]
    res = cli_verify(cache)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(lines) == 1 and lines[0].startswith("bad shard: ") and bad.name in lines[0]
    logs = []
    build_cache(cache, *pair, **{**KW, "log": logs.append})  # rewrites instead of "complete and matches"
    assert any(bad.name in m and "rewriting" in m for m in logs)
    assert verify_cache(cache) == {}
    assert_same_cache(cache, reference)


def test_truncated_shard_is_one_line_on_read_and_rewritten(cache, reference, pair):
    bad = shard_files(cache)[1]
    os.truncate(bad, os.path.getsize(bad) // 2)
    assert "truncated" in verify_cache(cache)[bad] or "unreadable" in verify_cache(cache)[bad]
    with pytest.raises(CacheError) as err:
        with open_cache(cache) as c:
            for _ in c.batches(keys=[("target", 2)], batch_size=256, split=None, shuffle=False):
                pass
    assert "\n" not in str(err.value) and bad.name in str(err.value)
    build_cache(cache, *pair, **KW)
    assert_same_cache(cache, reference)


def test_non_finite_values_are_refused_on_read(cache):
    bad = shard_files(cache)[0]
    with h5py.File(bad, "r+") as f:
        f["source/resid_pre_1"][3, 0] = np.nan
    assert "does not match its digest" in verify_cache(cache)[bad]
    with open_cache(cache) as c:
        with pytest.raises(CacheError, match="non-finite"):
            for _ in c.batches(keys=[("source", 1)], batch_size=64, split=None, shuffle=False):
                pass


def test_verify_without_a_cache_is_one_line(tmp_path):
    res = cli_verify(tmp_path / "none.h5")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: no cache shards to verify")


def test_edited_file_corpus_is_a_different_cache(tmp_path, pair):
    import json as _json

    corpus = tmp_path / "docs.jsonl"
    texts = [f"Document number {i} talks about rivers, mountains and the weather in spring." * 3 for i in range(40)]
    corpus.write_text("".join(_json.dumps({"text": t}) + "\n" for t in texts))
    kw = {**KW, "corpus": f"file:{corpus}", "tokens": 600, "corpus_cache_dir": str(tmp_path / "hf")}
    out = build_cache(tmp_path / "c.h5", *pair, **kw)
    corpus.write_text("".join(_json.dumps({"text": t.replace("rivers", "deserts")}) + "\n" for t in texts))
    with pytest.raises(CacheError, match="corpus_fingerprint"):
        build_cache(out, *pair, **kw)  # a finished cache of the old text is not reused
    out.unlink()  # an unfinished one (shards only) is not resumed either
    with pytest.raises(CacheError, match="corpus_fingerprint"):
        build_cache(out, *pair, **kw)


def test_deleted_shard_is_named_and_rebuilt(cache, reference, pair):
    gone = shard_files(cache)[2]
    gone.unlink()
    with pytest.raises(CacheError) as err:
        open_cache(cache)
    msg = str(err.value)
    assert "\n" not in msg and gone.name in msg and "re-run `stitchplug cache`" in msg and "move" not in msg
    assert verify_cache(cache) == {gone: "is missing (deleted?)"}
    logs = []
    build_cache(cache, *pair, **{**KW, "log": logs.append})
    assert any(gone.name in m and "rewriting" in m for m in logs)
    assert_same_cache(cache, reference)


def test_a_shard_passed_as_the_cache_says_so(cache):
    with pytest.raises(CacheError) as err:
        open_cache(shard_files(cache)[0])
    assert "one shard of a stitchplug cache" in str(err.value) and "re-run" not in str(err.value)
