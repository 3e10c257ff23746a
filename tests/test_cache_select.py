"""Layer-selective caching (SVCCA probe, then one target layer) and bfloat16 storage, on tiny models."""

import json

import h5py
import numpy as np
import pytest
import torch

from stitchplug.adapter import load_model
from stitchplug.cache import integrity
from stitchplug.cache.reader import open_cache
from stitchplug.cache.select import build_selected_cache, svcca_probe
from stitchplug.cache.writer import build_cache
from stitchplug.errors import CacheError
from stitchplug.stitch.svcca import choose_layer

SOURCE, TARGET = "tiny-llama-a", "tiny-gemma3"
KW = dict(tokens=900, context_size=48, source_layers=[1], shard_rows=200, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def pair():
    return load_model(SOURCE), load_model(TARGET)


@pytest.fixture(scope="module")
def full(tmp_path_factory, pair):
    """Today's layout: every target layer cached."""
    return build_cache(tmp_path_factory.mktemp("full") / "c.h5", *pair, target_layers=None, log=lambda m: None, **KW)


def test_probe_reads_rows_of_the_cache_and_only_the_chosen_layer_is_cached(tmp_path, pair, full):
    from stitchplug.cache import writer

    logs = []
    writer.FORWARD_STATS.update(positions=0, tokens=0)
    path, sel = build_selected_cache(tmp_path / "c.h5", *pair, target_layers=None, svcca_tokens=300,
                                     log=logs.append, **KW)
    selected_run = dict(writer.FORWARD_STATS)
    with open_cache(full) as c:
        ref = {l: c.array("target", l) for l in c.target_layers}
        ref_src = c.array("source", 1)
    best = sel["target_layer"]
    assert sel["tokens"] == 300 and str(best) == max(sel["profile"], key=sel["profile"].get)
    with open_cache(path) as c:
        assert c.target_layers == [best] and c.source_layers == [1]
        # the same shards and batches as the all-layer cache: the kept layers are bit-identical
        np.testing.assert_array_equal(c.array("target", best), ref[best])
        np.testing.assert_array_equal(c.array("source", 1), ref_src)
        stored = json.loads(c.attrs["layer_selection"])
    assert stored["profile"] == sel["profile"] and stored["target_layer"] == best
    # the batches the probe ran were not run again: the forwards are those of an explicit-layer build
    writer.FORWARD_STATS.update(positions=0, tokens=0)
    build_cache(tmp_path / "explicit.h5", *pair, target_layers=[best], log=lambda m: None, **KW)
    assert selected_run["positions"] == writer.FORWARD_STATS["positions"] > 0
    # the stitch stage uses the stored probe (full profile) instead of a one-layer SVCCA
    from stitchplug.config import StitchConfig
    from stitchplug.stitch.api import choose_layers

    with open_cache(path) as c:
        res = choose_layers(c, StitchConfig(svcca_tokens=300))
    assert res["best_target_layer"] == best and res["from"] == "cache probe" and len(res["profile"]) == 3
    # a second build reuses the cache and the probe's choice without probing again
    logs.clear()
    path2, sel2 = build_selected_cache(tmp_path / "c.h5", *pair, target_layers=None, svcca_tokens=300,
                                       log=logs.append, **KW)
    assert sel2 == stored and not any("SVCCA probe:" in m for m in logs)


def test_all_layers_stays_an_explicit_option(tmp_path, pair, full):
    path, sel = build_selected_cache(tmp_path / "c.h5", *pair, target_layers="all", log=None, **KW)
    assert sel is None
    with open_cache(path) as c, open_cache(full) as ref:
        assert c.target_layers == [0, 1, 2]
        np.testing.assert_array_equal(c.array("target", 2), ref.array("target", 2))
    with pytest.raises(CacheError, match="'all' or 'svcca'"):
        build_selected_cache(tmp_path / "d.h5", *pair, target_layers="every", **KW)


@pytest.mark.parametrize("shard_rows,n_tokens", [(200, 300), (2000, 150)])
def test_probe_rows_are_training_rows_of_the_cache_in_its_own_batches(pair, full, shard_rows, n_tokens):
    """The probe's rows are bit-identical to rows of the all-layer cache (same batches), all from the
    training split, and SVCCA on those cache rows gives exactly the probe's profile. (200, 300): the
    first shard is too small and the probe goes on into the next; (2000, 150): one shard, every k-th batch."""
    kw = {**KW, "shard_rows": shard_rows}
    kw.pop("progress"), kw.pop("source_layers")
    sel, shards, extra = svcca_probe(*pair, source_layer=1, n_tokens=n_tokens, corpus="wiki-en", **kw)
    rows = extra["rows"]
    assert sel["tokens"] == len(rows) == n_tokens and len(set(rows.tolist())) == n_tokens
    with open_cache(full) as c:
        train = c.rows("train")
        assert np.isin(rows, train).all() and len(c.eval_docs()) >= 1
        x = c.array("source", 1)[rows]
        ys = {l: c.array("target", l)[rows] for l in c.target_layers}
    best, profile = choose_layer(x, ys)
    assert sel["target_layer"] == best and sel["profile"] == {str(l): v for l, v in profile.items()}
    if shard_rows == 200:  # the first shard's training rows did not suffice
        assert sorted(sel["batches"]) == ["0", "1"] and rows.max() >= shards[0].rows
    else:  # spread over the shard's batches, not its first rows
        picked = sel["batches"]["0"]
        assert list(sel["batches"]) == ["0"] and len(picked) >= 2 and picked[1] - picked[0] >= 2
        assert rows.max() > n_tokens * 2
    # ready: exactly the probed batches' windows, at the chosen layer only
    ready = extra["ready"]
    assert all(set(acts) == {best} for part in ready.values() for acts in part["target"].values())
    # a request larger than the slice's training rows takes them all
    sel_all, _, extra_all = svcca_probe(*pair, source_layer=1, n_tokens=10_000, corpus="wiki-en", **kw)
    assert sel_all["tokens"] == len(train) == len(extra_all["rows"])


def test_bfloat16_storage_is_raw_bits_read_back_as_float32(tmp_path, pair, full):
    a, b = pair
    big = load_model(TARGET)
    with torch.no_grad():
        big.model.embed.W_E.mul_(1e6)  # beyond float16's range: bfloat16 stores it
    kw = {**KW, "tokens": 300, "target_layers": [0, 2]}
    p_big = build_cache(tmp_path / "big" / "c.h5", a, big, dtype="bfloat16", log=lambda m: None, **kw)
    with open_cache(p_big) as c:
        assert np.abs(c.array("target", 0)).max() > 4 * 65504  # float16 would refuse this
    p = build_cache(tmp_path / "bf" / "c.h5", a, b, dtype="bfloat16", log=lambda m: None, **kw)
    with h5py.File(p, "r") as f:
        assert f.attrs["dtype"] == "bfloat16"
        ds = f["target/resid_pre_2"]
        assert ds.dtype == np.uint16 and ds.attrs["stitchplug_dtype"] == "bfloat16"
    with open_cache(p) as c, open_cache(full) as ref:
        got = c.array("target", 2)
        want = torch.from_numpy(ref.array("target", 2)[:300]).to(torch.bfloat16).float().numpy()
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
        (x,) = next(iter(c.batches(keys=[("target", 2)], batch_size=300, split=None, shuffle=False)))
        assert x.dtype == torch.float32
        np.testing.assert_array_equal(x.numpy(), want)
        np.testing.assert_array_equal(c.array("source", "token_ids"), ref.array("source", "token_ids")[:300])
    assert integrity.verify_cache(p) == {}
    # non-finite bfloat16 bits are caught by the shard check like float32 ones
    shard = integrity.shard_files(p)[0]
    with h5py.File(shard, "r+") as f:
        f["target/resid_pre_2"][0, 0] = np.uint16(0x7FC0)  # a bfloat16 NaN
    assert "does not match its digest" in integrity.verify_cache(p)[shard]


def test_self_pair_runs_one_forward_with_the_same_bits(tmp_path, pair):
    """build_cache(A, A): one encode and one forward per window, bit-identical to two separate adapters."""
    from stitchplug.cache import writer

    a = pair[0]
    kw = {**KW, "tokens": 400, "target_layers": [1]}
    writer.FORWARD_STATS.update(positions=0, tokens=0)
    once = build_cache(tmp_path / "once" / "c.h5", a, a, log=lambda m: None, **kw)
    one_pass = writer.FORWARD_STATS["tokens"]
    writer.FORWARD_STATS.update(positions=0, tokens=0)
    twice = build_cache(tmp_path / "twice" / "c.h5", a, load_model(SOURCE), log=lambda m: None, **kw)
    assert writer.FORWARD_STATS["tokens"] == 2 * one_pass > 0
    with open_cache(once) as c1, open_cache(twice) as c2:
        for side in ("source", "target"):
            np.testing.assert_array_equal(c1.array(side, 1), c2.array(side, 1))
            np.testing.assert_array_equal(c1.array(side, "token_ids"), c2.array(side, "token_ids"))
        np.testing.assert_array_equal(c1.array("source", 1), c1.array("target", 1))


def test_cli_all_layers_and_bfloat16_flags(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "c.h5"
    res = subprocess.run([sys.executable, "-m", "stitchplug", "cache", "--models-source", SOURCE, "--models-target",
                          TARGET, "--output", str(out), "--no-progress", "--cache-tokens", "200",
                          "--cache-context-size", "48", "--cache-target-layers", "all", "--cache-dtype", "bfloat16"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    with open_cache(out) as c:
        assert c.target_layers == [0, 1, 2] and c.attrs["dtype"] == "bfloat16" and "layer_selection" not in c.attrs
        assert c.array("target", 1).dtype == np.float32


@pytest.mark.parametrize("keep_rows", [10**9, 250])
def test_the_writer_uses_the_plan_instead_of_tokenising_again(tmp_path, pair, full, monkeypatch, keep_rows):
    """A plan covering the slice: the writer windows nothing itself; a plan cut after its first shards
    (``keep_rows``): the writer windows the rest. Either way the cache is bit-identical to one built
    without a plan."""
    from stitchplug.cache import plan as plan_mod
    from stitchplug.cache.select import plan_slice

    shards, n_docs = plan_slice(*pair, corpus="wiki-en", doc_start=0, tokens=KW["tokens"],
                                context_size=KW["context_size"], shard_rows=KW["shard_rows"], keep_rows=keep_rows)
    planned = [d for s in shards for d in s.docs]
    assert (len(planned) == n_docs) == (keep_rows > 900) and len(shards) >= 1
    calls = []
    real = plan_mod.paired_windows
    monkeypatch.setattr(plan_mod, "paired_windows", lambda *a, **k: calls.append(1) or real(*a, **k))
    path = build_cache(tmp_path / "c.h5", *pair, target_layers=[0, 1, 2], planned=planned, log=lambda m: None, **KW)
    assert len(calls) == n_docs - len(planned) and (len(calls) > 0) == (keep_rows < 900)
    with open_cache(path) as c, open_cache(full) as ref:
        for l in (0, 1, 2):
            np.testing.assert_array_equal(c.array("target", l), ref.array("target", l))
        np.testing.assert_array_equal(c.array("source", 1), ref.array("source", 1))
        assert c.attrs["n_docs"] == ref.attrs["n_docs"] == n_docs


def test_an_interrupted_selected_build_resumes_without_a_new_probe(tmp_path, pair):
    from stitchplug.cache.format import shard_dir

    path, sel = build_selected_cache(tmp_path / "c.h5", *pair, target_layers=None, svcca_tokens=300,
                                     log=lambda m: None, **KW)
    with open_cache(path) as c:
        want = {l: c.array("target", l) for l in c.target_layers}
    shards = sorted(shard_dir(path).glob("shard_*.h5"))
    assert len(shards) >= 3
    with h5py.File(shards[-1], "r") as f:  # every shard records the choice
        assert json.loads(f.attrs["layer_selection"]) == sel
    path.unlink()  # killed after two shards: no entry file, the later shards gone
    for p in shards[2:]:
        p.unlink()
    logs = []
    path2, sel2 = build_selected_cache(tmp_path / "c.h5", *pair, target_layers=None, svcca_tokens=300,
                                       log=logs.append, **KW)
    assert sel2 == sel and not any("SVCCA probe:" in m for m in logs)
    assert any("resuming with target layer" in m for m in logs)
    with open_cache(path2) as c:
        assert json.loads(c.attrs["layer_selection"]) == sel
        for l, x in want.items():
            np.testing.assert_array_equal(c.array("target", l), x)
    # a different probe request (or a first shard without a record) probes again
    path.unlink()
    for p in sorted(shard_dir(path).glob("shard_*.h5"))[2:]:
        p.unlink()
    logs.clear()
    build_selected_cache(tmp_path / "c.h5", *pair, target_layers=None, svcca_tokens=299, log=logs.append, **KW)
    assert any("SVCCA probe:" in m for m in logs)
