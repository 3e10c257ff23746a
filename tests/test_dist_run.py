"""`torchrun --nproc-per-node 2 -m stitchplug run` (gloo on CPU, tiny models): the same cache (bit for
bit), stitch and source SAE as one process, one complete run folder written by rank 0, every stage
reused on a second launch, and a refusal on rank 0 ending every rank with the one-line error."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_dist import ENV, arrays, assert_same, one_rank, two_ranks

RUN = ["run", "--models-source", "tiny-llama-a", "--models-target", "tiny-gemma3", "--cache-tokens", "3000",
       "--cache-context-size", "64", "--stitch-svcca-tokens", "500", "--sae-width", "64", "--sae-k", "4",
       "--sae-train-tokens", "4000", "--sae-batch-size", "256", "--eval-docs", "4", "--eval-max-windows", "4",
       "--no-progress"]
STAGES = ("cache", "stitch", "sae.source", "stitch_ce", "sae.transfer", "sae.baseline", "sae.evaluate")


def launch(cmd, timeout=300):
    """Run ``cmd``; a hang fails the test (TimeoutExpired) instead of blocking the suite."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    one, two = root / "one", root / "two"
    r1 = launch(one_rank(*RUN, "--output-dir", str(one)))
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = launch(two_ranks(*RUN, "--output-dir", str(two)))
    assert r2.returncode == 0, r2.stderr[-3000:]
    return one, two, r2


def test_two_rank_run_matches_one_process_and_writes_the_folder_once(runs):
    one, two, res = runs
    # bit-identical cache (one shard at this size: shards split over ranks are tests/test_dist.py's)
    assert_same(arrays(two / "cache.h5"), arrays(one / "cache.h5"))
    for f in ("stitch/stitch.safetensors", "artifacts/sae/source/sae_weights.safetensors"):
        a, b = load_file(one / f), load_file(two / f)
        for k in a:  # same global batches, float sums in another order
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    # the SAE's training summary is the global batch's and all ranks' FLOPs, not rank 0's share
    m1, m2 = (json.loads((d / "artifacts/sae/source/cfg.json").read_text())["metadata"]["stitchplug_training"]
              for d in (one, two))
    assert m2["train_flops"] == m1["train_flops"] > 0 and m2["steps"] == m1["steps"] == 15
    assert m2["mse_final"] == pytest.approx(m1["mse_final"], rel=1e-4)
    assert m2["explained_variance_final"] == pytest.approx(m1["explained_variance_final"], rel=1e-4)
    met1, met2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert met2["stitch"]["fit"]["flops"] == met1["stitch"]["fit"]["flops"]
    assert met2["sae"]["transferred_on_B"]["reconstruction"]["fvu"] == pytest.approx(
        met1["sae"]["transferred_on_B"]["reconstruction"]["fvu"], rel=1e-4)
    for f in ("config.yaml", "metrics.json", "report.md", "artifacts/sae/random/cfg.json"):
        assert (two / f).exists(), f
    # rank 0 alone decided, wrote markers and the report; rank 1 left after the source SAE
    err = res.stderr
    for stage in STAGES:
        assert err.count(f"[{stage}] running") == 1 and err.count(f"[{stage}] done") == 1, stage
    assert err.count("report: ") == 1 and res.stdout.count("report.md") == 1
    assert "[rank 1/2] distributed stages done" in err and "rank 1 of 2 writes shards" in err
    assert "[rank 1/2] [" not in err
    assert err.index("[rank 1/2] distributed stages done") > err.index("[sae.source] done")


def test_second_two_rank_launch_reuses_every_stage(runs):
    _, two, _ = runs
    before = {s: (two / "stages" / f"{s}.json").read_text() for s in STAGES}
    res = launch(two_ranks(*RUN, "--output-dir", str(two)))
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in STAGES:
        assert res.stderr.count(f"[{stage}] reused") == 1, stage
        assert (two / "stages" / f"{stage}.json").read_text() == before[stage]
    assert "running" not in res.stderr


def test_rank0_refusal_ends_every_rank_with_the_one_line_error(runs):
    _, two, _ = runs
    res = launch(two_ranks(*RUN, "--output-dir", str(two), "--cache-tokens", "2000"), timeout=180)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("Error: ")]
    # both ranks print rank 0's refusal themselves (rank 1 got it by broadcast; nobody hung or was killed)
    assert len(lines) == 2 and lines[0] == lines[1], res.stderr[-3000:]
    # (torchrun may still SIGTERM rank 1 while it exits after printing, so its exit code is 1 or -15)
    assert "finished stage 'cache' with a different config" in lines[0] and "cache.tokens" in lines[0]


def test_rank_shares_of_across_epoch_batches_are_the_one_process_batches(runs):
    """What rank r's ``train_activations`` read (rows r::N of batches re-cut across epochs) is, together,
    what the SAE trainer's ``rebatch`` makes of one process's batches: the same rows in every step."""
    from stitchplug.cache.reader import open_cache
    from stitchplug.sae.trainer import rebatch

    one, _, _ = runs
    with open_cache(one / "cache.h5") as c:
        key = [("source", None)]
        n_train = len(c.rows("train"))
        for batch, world in ((256, 2), (255, 3)):
            assert n_train % batch  # an epoch ends inside a batch
            steps = 3 * n_train // batch  # three epochs
            plain = (x for (x,) in c.batches(keys=key, batch_size=batch, seed=5, epochs=100))
            want = list(rebatch(plain, batch, c.d_source, max_tokens=steps * batch))
            shares = [list(rebatch((x for (x,) in c.batches(keys=key, batch_size=batch, seed=5, epochs=100,
                                                             part=(r, world), across_epochs=True)),
                                   batch // world, c.d_source, max_tokens=steps * batch // world))
                      for r in range(world)]
            assert len(want) == steps and all(len(s) == steps for s in shares)
            for k in range(steps):
                got = torch.cat([s[k] for s in shares]).numpy()
                w = want[k].numpy()
                assert np.array_equal(got[np.lexsort(got.T)], w[np.lexsort(w.T)]), k
