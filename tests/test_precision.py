"""TF32 (issue 24): off by default, scoped to the training loops that ask for it, a no-op on the CPU, and
part of the stitch's and the SAE's identity; the cache's writer queue depth is part of no stage's."""

from __future__ import annotations

import pytest
import torch

from stitchplug.precision import tf32, tf32_loop


def flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def tf32_off():
    old = flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_tf32_is_on_only_inside_a_cuda_loop_and_restored_after_an_error(tf32_off):
    seen = []
    for _ in tf32_loop(range(2), True, "cuda:0"):  # setting the flags needs no GPU
        seen.append(flags())
    assert seen == [(True, True)] * 2 and flags() == (False, False)
    with pytest.raises(ValueError):
        for _ in tf32_loop(range(3), True, torch.device("cuda")):
            raise ValueError("a step failed")
    assert flags() == (False, False)
    for _ in tf32_loop(range(2), True, "cuda"):
        break
    assert flags() == (False, False)


def test_tf32_is_a_no_op_on_the_cpu_and_when_off(tf32_off):
    for _ in tf32_loop(range(2), True, "cpu"):
        assert flags() == (False, False)
    with tf32(False, "cuda"):
        assert flags() == (False, False)


def test_adam_stitch_on_the_cpu_is_the_same_with_tf32_allowed(one_thread):
    from stitchplug.config import StitchConfig
    from stitchplug.stitch.fit import train_adam
    from stitchplug.stitch.model import Stitch

    g = torch.Generator().manual_seed(0)
    xa, xb = torch.randn(256, 6, generator=g), torch.randn(256, 5, generator=g)

    def source():
        for i in range(0, 256, 64):
            yield xa[i:i + 64], xb[i:i + 64]

    out = []
    for allow in (False, True):
        torch.manual_seed(0)
        s = Stitch(6, 5)
        train_adam(s, source, StitchConfig(solver="adam", epochs=1, allow_tf32=allow, lr=1e-2), 4)
        out.append(torch.cat([p.detach().flatten() for p in s.parameters()]))
    assert torch.equal(out[0], out[1])


def test_flags_enter_their_stages_identity_and_queue_depth_none(tmp_path):
    from stitchplug.config import build_config, run_config_class
    from stitchplug.run.pipeline import Pipeline

    cls = run_config_class()
    base = Pipeline(build_config(cls=cls, overrides={"output_dir": str(tmp_path)}), log=lambda m: None)
    on = Pipeline(build_config(cls=cls, overrides={"output_dir": str(tmp_path), "stitch.allow_tf32": True,
                                                   "sae.allow_tf32": True, "cache.queue_depth": 0}),
                  log=lambda m: None)
    d0, d1 = base.stage_deps(), on.stage_deps()
    assert d0["cache"] == d1["cache"] and "queue_depth" not in d1["cache"]["cache"]
    assert d0["stitch"] != d1["stitch"] and d1["stitch"]["stitch"]["allow_tf32"] is True
    # sae.allow_tf32 is marked added_later: at its default it stays out of the fingerprint (older folders resume)
    assert d1["sae.source"]["sae"]["allow_tf32"] is True and "allow_tf32" not in d0["sae.source"]["sae"]
