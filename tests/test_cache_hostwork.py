"""The shard's host work on a thread pool (issue 24, ``cache.host_workers``): the same bytes, digests
computed from memory that match the file, errors as before, no thread left behind."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from stitchplug.adapter import load_model
from stitchplug.cache import hostwork, integrity
from stitchplug.cache.format import store
from stitchplug.cache.hostwork import HostPool, PackedLayer
from stitchplug.cache.writer import build_cache
from stitchplug.errors import CacheError

from test_cache_overlap import KW, SOURCE, TARGET, entry_arrays, shard_bytes, writer_threads


@pytest.fixture(scope="module")
def pair():
    return load_model(SOURCE), load_model(TARGET)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_host_workers_write_the_same_bytes(tmp_path, pair, dtype, monkeypatch):
    monkeypatch.setattr(hostwork, "CHUNK_ROWS", 64)  # several chunks per layer of these small shards
    one = build_cache(tmp_path / "w1" / "c.h5", *pair, dtype=dtype, host_workers=1, queue_depth=0, **KW)
    three = build_cache(tmp_path / "w3" / "c.h5", *pair, dtype=dtype, host_workers=3, queue_depth=2, **KW)
    want, got = shard_bytes(one), shard_bytes(three)
    assert len(want) >= 5 and list(got) == list(want)
    for name in want:
        assert got[name] == want[name], name  # the whole file: data, digests, attributes
    a, b = entry_arrays(one), entry_arrays(three)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].tolist() == b[name].tolist() if a[name].dtype == object else a[name].tobytes() == b[name].tobytes()
    assert not writer_threads()


def test_recorded_digests_are_those_of_the_file(tmp_path, pair, monkeypatch):
    """Every digest stored (the layers' from memory) equals a re-read of the dataset, as the old stamp did."""
    monkeypatch.setattr(hostwork, "CHUNK_ROWS", 50)
    out = build_cache(tmp_path / "c.h5", *pair, dtype="bfloat16", host_workers=3, **KW)
    shards = integrity.shard_files(out)
    assert shards and integrity.verify_cache(out) == {}
    for p in shards:
        with h5py.File(p, "r") as f:
            stored = json.loads(f.attrs[integrity.DIGEST_ATTR])
            reread = {n: integrity._digest_and_finite(f[n])[0] for n in integrity._datasets(f)}
        assert stored == reread and any(n.startswith("target/resid_pre_") for n in stored)


def test_resume_across_host_workers(tmp_path, pair):
    """Shards written with 3 workers, some deleted, resumed with 1: the same bytes as one run."""
    ref = build_cache(tmp_path / "ref" / "c.h5", *pair, dtype="bfloat16", host_workers=1, **KW)
    out = build_cache(tmp_path / "c.h5", *pair, dtype="bfloat16", host_workers=3, **KW)
    shards = integrity.shard_files(out)
    out.unlink()
    for p in shards[2:]:
        p.unlink()
    build_cache(out, *pair, dtype="bfloat16", host_workers=1, **KW)
    assert shard_bytes(out) == shard_bytes(ref)
    logs = []
    build_cache(out, *pair, dtype="bfloat16", host_workers=4, **{**KW, "log": logs.append})
    assert any("reusing it" in m for m in logs)  # not part of the cache's identity


def _pieces(rng, n_windows=7, length=30, d=5):
    acts = [rng.standard_normal((length, d)).astype(np.float32) for _ in range(n_windows)]
    idx = [np.sort(rng.choice(length, size=rng.integers(0, length), replace=False)) for _ in range(n_windows)]
    return list(zip(acts, idx))


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_packed_layer_is_store_of_the_concatenated_rows(monkeypatch, workers, dtype):
    monkeypatch.setattr(hostwork, "CHUNK_ROWS", 20)
    pieces = _pieces(np.random.default_rng(0))
    want = store(np.concatenate([a[i] for a, i in pieces]), dtype, "x")
    with HostPool(workers) as pool:
        layer = PackedLayer(pool, pieces, 5, dtype, "x")
        got = layer.array()
        assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
        assert layer.digest() == hostwork.digest(want)
        empty = PackedLayer(pool, [], 5, dtype, "x").array()
        assert empty.tobytes() == store(np.zeros((0, 5), np.float32), dtype, "x").tobytes()
        assert empty.shape == (0, 5) and empty.dtype == want.dtype


@pytest.mark.parametrize("workers", [1, 3])
def test_refusals_are_the_single_threaded_messages(monkeypatch, workers):
    monkeypatch.setattr(hostwork, "CHUNK_ROWS", 20)
    pieces = _pieces(np.random.default_rng(1))
    pieces[4][0][pieces[4][1][0], 2] = np.nan
    with HostPool(workers) as pool, pytest.raises(CacheError, match=r"^target layer 3 \(m\) holds non-finite"):
        PackedLayer(pool, pieces, 5, "bfloat16", "target layer 3 (m)").array()
    pieces = _pieces(np.random.default_rng(2))
    pieces[5][0][pieces[5][1][-1], 0] = 1e6
    with pytest.raises(CacheError) as exc:
        store(np.concatenate([a[i] for a, i in pieces]), "float16", "w")
    with HostPool(workers) as pool, pytest.raises(CacheError) as got:
        PackedLayer(pool, pieces, 5, "float16", "w").array()
    assert str(got.value) == str(exc.value) and "1,000,000" in str(got.value)


def test_bad_host_workers_is_refused(tmp_path, pair):
    with pytest.raises(CacheError, match="host_workers must be at least 1"):
        build_cache(tmp_path / "c.h5", *pair, host_workers=0, **KW)
    assert not Path(f"{tmp_path / 'c.h5'}.shards").exists()


def test_host_workers_is_not_in_any_stage_identity(tmp_path):
    from stitchplug.config import build_config, run_config_class
    from stitchplug.run.pipeline import Pipeline

    cls = run_config_class()
    base = Pipeline(build_config(cls=cls, overrides={"output_dir": str(tmp_path)}), log=lambda m: None)
    other = Pipeline(build_config(cls=cls, overrides={"output_dir": str(tmp_path), "cache.host_workers": 5}),
                     log=lambda m: None)
    assert base.stage_deps() == other.stage_deps()
    assert all("host_workers" not in deps.get("cache", {}) for deps in other.stage_deps().values())


def test_cli_refuses_zero_host_workers_before_anything_runs(tmp_path, capsys):
    from stitchplug.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["cache", "--models-source", SOURCE, "--models-target", TARGET, "--output", str(tmp_path / "c.h5"),
              "--cache-host-workers", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "cache.host_workers" in err and "Traceback" not in err
    assert not (tmp_path / "c.h5.shards").exists()
