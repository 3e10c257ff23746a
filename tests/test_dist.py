"""torchrun on CPU (gloo, 2 ranks, tiny models): the cache is bit-identical to one process, a killed
run resumes, the closed-form moments are all-reduced, and the Adam stitch and the TopK SAE trainer
run under DDP with the same result as one process on the same global batches."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

TESTS = Path(__file__).parent
SOURCE, TARGET = "tiny-llama-a", "tiny-gemma3"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "STITCHPLUG_DIST_TIMEOUT": "300"}


def cache_args(out, tokens=1500, shard_rows=100):
    return ["cache", "--models-source", SOURCE, "--models-target", TARGET, "--output", str(out),
            "--no-progress", "--cache-tokens", str(tokens), "--cache-context-size", "48",
            "--cache-batch-size", "4", "--cache-source-layers", "1", "--stitch-svcca-tokens", "300",
            "--shard-rows", str(shard_rows)]


def one_rank(*args):
    return [sys.executable, "-m", "stitchplug", *args]


def two_ranks(*args, module=True):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            *(["-m", "stitchplug"] if module else []), *args]


def run(cmd, timeout=600):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def arrays(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
        out["@attrs"] = {k: v for k, v in f.attrs.items() if k not in ("created", "layer_selection")}
        sel = json.loads(f.attrs["layer_selection"])
        for key in ("seconds", "plan_seconds", "svcca_seconds"):  # the probe's wall times
            sel.pop(key)
        out["@attrs"]["layer_selection"] = json.dumps(sel, sort_keys=True)
    return out


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        if name == "@attrs":
            assert sorted(g) == sorted(w)
            for k in w:
                assert np.array_equal(g[k], w[k]) if isinstance(w[k], np.ndarray) else g[k] == w[k], k
        elif w.dtype == object:
            assert g.tolist() == w.tolist(), name
        else:
            assert g.dtype == w.dtype and g.tobytes() == w.tobytes(), name


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "c.h5"
    res = run(one_rank(*cache_args(out), "--cache-queue-depth", "0"))  # the synchronous path; ranks overlap (default)
    assert "SVCCA probe chose" in res.stderr
    return out


def test_two_ranks_write_the_same_cache_as_one(reference, tmp_path):
    out = tmp_path / "c.h5"
    res = run(two_ranks(*cache_args(out)))
    assert "rank 1 of 2 writes shards" in res.stderr
    shards = sorted(out.with_name("c.h5.shards").glob("shard_*.h5"))
    assert len(shards) >= 4  # both ranks wrote some
    assert_same(arrays(out), arrays(reference))
    for s in shards:  # shard files too: boundaries do not depend on the world size
        ref = reference.with_name("c.h5.shards") / s.name
        with h5py.File(s) as a, h5py.File(ref) as b:
            assert a.attrs["digests"] == b.attrs["digests"]


def test_killed_two_rank_run_resumes_bit_identical(reference, tmp_path):
    out = tmp_path / "c.h5"
    shards = out.with_name("c.h5.shards")
    proc = subprocess.Popen(two_ranks(*cache_args(out)), stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            env=ENV, start_new_session=True)
    deadline = time.time() + 300
    while len(list(shards.glob("shard_*.h5"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the cache finished before it could be killed"
    for pid in [*descendants(proc.pid), proc.pid]:  # both ranks (torchrun starts them in new sessions), then torchrun
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    assert not out.exists()
    n_before = len(list(shards.glob("shard_*.h5")))
    res = run(two_ranks(*cache_args(out)))
    assert n_before >= 3 and ("resuming after" in res.stderr or "kept" in res.stderr)
    assert_same(arrays(out), arrays(reference))


def test_moments_adam_and_sae_under_ddp_match_one_process(reference, tmp_path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    worker = str(TESTS / "dist_worker.py")
    run([sys.executable, worker, str(reference), str(one), "64"])
    run(two_ranks(worker, str(reference), str(two), "64", module=False))
    a, b = torch.load(one), torch.load(two)
    assert b["world"] == 2 and a["world"] == 1
    assert a["n"] == b["n"] and a["steps"] == b["steps"] > 3
    for k, v in a["stats"].items():
        torch.testing.assert_close(b["stats"][k], v, rtol=1e-10, atol=1e-10 * float(v.abs().max()))
    for k, v in a["stitch"].items():  # same global batches; float32 sums in another order
        torch.testing.assert_close(b["stitch"][k], v, rtol=1e-4, atol=1e-5)
    # the SAE trainer: same weights as one process with the same global batch (AuxK on, dead window 3)
    assert a["sae_summary"]["steps"] == b["sae_summary"]["steps"] == 12
    for k, v in a["sae"].items():
        torch.testing.assert_close(b["sae"][k], v, rtol=1e-4, atol=1e-5)
    assert b["sae_summary"]["dead_latents_train"] == a["sae_summary"]["dead_latents_train"]
    from stitchplug.stitch.model import Stitch

    init = Stitch(a["stitch"]["P_up"].shape[0], a["stitch"]["P_up"].shape[1], seed=0)
    assert (a["stitch"]["P_up"] - init.P_up.detach()).abs().max() > 1e-3  # Adam moved the weights


def test_stitch_train_cli_under_torchrun_matches_one_process(reference, tmp_path):
    """`torchrun -m stitchplug stitch train`: the closed form's moments are all-reduced, rank 0 saves."""
    from safetensors.torch import load_file

    args = ["stitch", "train", "--cache", str(reference), "--stitch-solver", "lstsq", "--json"]
    r1 = json.loads(run(one_rank(*args, "--out", str(tmp_path / "one.safetensors"))).stdout)
    r2 = json.loads(run(two_ranks(*args, "--out", str(tmp_path / "two.safetensors"))).stdout)
    # each rank read half of every batch; the all-reduced count is the whole training split
    assert r2["fit"]["train_tokens"] == r1["fit"]["train_tokens"] > 0
    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5 * float(a[k].abs().max()))


def test_gpu_groups_also_carry_cpu_tensors():
    """A plain nccl group refuses the CPU float64 moments (seen on an H200): CUDA runs add gloo."""
    from stitchplug.dist import backend_for

    assert backend_for("cpu") == "gloo"
    assert backend_for("cuda") == "cpu:gloo,cuda:nccl"
