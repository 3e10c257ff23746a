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
# the one SAE trainer under DDP: rank r takes rows r::world of every global batch of 256
from stitchplug.sae.trainer import train_topk_sae  # noqa: E402

g = torch.Generator().manual_seed(7)
atoms = torch.randn(48, 16, generator=g)
data = [torch.rand(256, 48, generator=g).pow(8) @ atoms + 3.0 for _ in range(12)]
sae, summary = train_topk_sae([b[rank::world] for b in data], 16, width=32, k=4, lr=3e-3, train_tokens=12 * 256,
                              batch_size=256, aux_k_coef=1 / 32, dead_window=3, seed=0, progress=False)
if rank == 0:
    torch.save({"stats": mom.stats(), "n": mom.n, "stitch": {k: v.detach().clone() for k, v in st.state_dict().items()},
                "steps": run["steps"], "world": world,
                "sae": {k: v.detach().clone() for k, v in sae.state_dict().items()}, "sae_summary": summary}, out)
dist.shutdown()
