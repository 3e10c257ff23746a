"""TopK SAE training with sae-lens on synthetic sparse data, and the `sae` artifact's obtain/save/load."""

import pytest
import torch

from stitchplug.artifacts import ArtifactContext
from stitchplug_sae.config import SAEConfig
from stitchplug.errors import StageError
from stitchplug.metrics import recon_metrics
from stitchplug.plugins import registry
from stitchplug.sae.trainer import rebatch, train_topk_sae

D, NF = 32, 64


class Synthetic:
    """Sparse non-negative combinations of NF unit features plus a large constant offset; re-iterable."""

    def __init__(self, n_batches=30, batch=256, seed=0):
        g = torch.Generator().manual_seed(seed)
        feats = torch.randn(NF, D, generator=g)
        self.feats = feats / feats.norm(dim=-1, keepdim=True)
        self.offset = torch.zeros(D)
        self.offset[0] = 50.0  # a "massive" dimension with a large mean
        self.data = [self.sample(batch, g) for _ in range(n_batches)]

    def sample(self, n, g):
        on = torch.rand(n, NF, generator=g) < 3 / NF
        return (on * torch.rand(n, NF, generator=g) * 5) @ self.feats + self.offset

    def __iter__(self):
        return iter(self.data)


def test_rebatch_cycles_reiterables_and_stops():
    data = [torch.randn(5, 4), torch.randn(7, 4)]
    out = list(rebatch(data, 8, 4, max_tokens=40))
    assert [b.shape for b in out] == [(8, 4)] * 5
    assert torch.equal(out[0][:5], data[0]) and torch.equal(out[1][4:8], data[0][:4])
    assert len(list(rebatch(iter(data), 8, 4, max_tokens=40))) == 1  # one-shot iterator ends
    with pytest.raises(StageError, match="width"):
        list(rebatch(data, 8, 3))


def test_topk_sae_learns_sparse_synthetic_data():
    data = Synthetic()
    sae, summary = train_topk_sae(data, D, width=128, k=4, lr=3e-3, train_tokens=40_000, batch_size=256,
                                  seed=0, model_name="synthetic", hook_name="blocks.0.hook_resid_pre",
                                  progress=False)
    g = torch.Generator().manual_seed(123)
    x = data.sample(2000, g)
    codes = sae.encode(x)
    assert ((codes != 0).sum(-1) == 4).float().mean() > 0.99  # L0 == k
    m = recon_metrics(x, sae(x))
    assert m["fvu"] < 0.3, m
    assert summary["explained_variance_final"] > summary["explained_variance_first"]
    assert summary["mse_final"] < summary["mse_first"]
    assert summary["steps"] == 40_000 // 256 and not summary["stopped_early"]
    assert len(summary["curve"]["mse"]) <= 51
    assert sae.cfg.metadata.model_name == "synthetic" and sae.cfg.architecture() == "topk"


def test_training_is_deterministic_for_a_seed():
    data = Synthetic(n_batches=4, batch=128)
    kw = dict(width=64, k=4, lr=1e-3, train_tokens=1024, batch_size=128, progress=False)
    a, _ = train_topk_sae(data, D, seed=5, **kw)
    b, _ = train_topk_sae(data, D, seed=5, **kw)
    c, _ = train_topk_sae(data, D, seed=6, **kw)
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.b_enc, b.b_enc)
    assert not torch.equal(a.W_dec, c.W_dec)


def test_training_input_errors():
    with pytest.raises(StageError, match="empty"):
        train_topk_sae([], D, width=16, k=2, lr=1e-3, train_tokens=256, batch_size=128, progress=False)
    with pytest.raises(StageError, match="k=20"):
        train_topk_sae(Synthetic(2), D, width=16, k=20, lr=1e-3, train_tokens=256, batch_size=128,
                       progress=False)


def test_sae_artifact_obtain_save_load(tmp_path):
    art = registry().get("artifacts", "sae").factory()
    data = Synthetic(n_batches=4, batch=128)
    ctx = ArtifactContext(model_name="synthetic", layer=2, train_activations=lambda batch_size, seed: data)
    cfg = SAEConfig(width=64, k=4, lr=1e-3, train_tokens=1024, batch_size=128)
    sae = art.obtain(ctx, cfg)
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_pre"
    assert sae.cfg.metadata.stitchplug_training["steps"] == 8
    folder = art.save(sae, tmp_path / "src", {"role": "source"})
    again = art.load(folder)
    x = data.data[0]
    assert torch.allclose(again(x), sae(x), atol=1e-5)
    # loading it back as a source through the config path; a wrong layer is refused
    assert art.obtain(ctx, SAEConfig(source=str(folder))).cfg.d_sae == 64
    with pytest.raises(StageError, match="hook"):
        art.obtain(ArtifactContext(model_name="synthetic", layer=3), SAEConfig(source=str(folder)))
    with pytest.raises(StageError, match="train_activations"):
        art.obtain(ArtifactContext(model_name="synthetic", layer=2), cfg)
    base = art.baseline(sae, ctx)
    assert base.W_dec.shape == sae.W_dec.shape
    assert torch.allclose(base.b_dec, torch.cat(data.data).mean(0), atol=1e-3)
