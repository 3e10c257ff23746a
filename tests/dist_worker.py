"""Run by tests/test_dist.py, once in one process and once under torchrun with 2 gloo ranks: float64
moments (closed-form solver) and a few Adam steps (DDP) on a tiny cache; rank 0 saves the results."""

import math
import sys

import torch

from stitchplug import dist
from stitchplug.cache.reader import open_cache
from stitchplug.config import StitchConfig
from stitchplug.stitch.data import CacheSource
from stitchplug.stitch.fit import accumulate_moments, train_adam
from stitchplug.stitch.model import Stitch

torch.set_num_threads(1)
rank, world = dist.init_from_env("cpu")
cache_path, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open_cache(cache_path) as c:
    lA, lB = c.source_layers[0], c.target_layers[-1]
    src = CacheSource(c, lA, lB, batch, split="train", shuffle=True, seed=3, part=(rank, world) if world > 1 else None)
    mom, _ = accumulate_moments(src, c.d_source, c.d_target)
    st = Stitch(c.d_source, c.d_target, seed=0)
    cfg = StitchConfig(solver="adam", lr=3e-3, epochs=1, batch_size=batch)
    full = src.n_tokens // batch  # full global batches only: every rank's share has the same size
    run = train_adam(st, src, cfg, steps_per_epoch=math.ceil(src.n_tokens / batch), seed=0, max_steps=full)
    if rank == 0:
        torch.save({"stats": mom.stats(), "n": mom.n, "stitch": {k: v.detach().clone() for k, v in st.state_dict().items()},
                    "steps": run["steps"], "world": world}, out)
dist.shutdown()
