"""SVCCA: a linear transform of a representation scores ~1, independent noise scores low."""

import torch

from stitchplug.stitch.svcca import choose_layer, svcca


def _rep(n=3000, d=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g)


def test_svcca_linear_transform_is_near_one():
    x = _rep()
    y = x @ torch.randn(30, 50, generator=torch.Generator().manual_seed(1)) + 4.0
    r = svcca(x, y, var_explained=0.999)
    assert r["mean"] > 0.97


def test_svcca_independent_noise_is_low():
    x = _rep()
    y = torch.randn(3000, 50, generator=torch.Generator().manual_seed(2))
    assert svcca(x, y)["mean"] < 0.2


def test_choose_layer_picks_the_related_layer():
    x = _rep()
    g = torch.Generator().manual_seed(3)
    targets = {
        0: torch.randn(3000, 40, generator=g),
        1: x @ torch.randn(30, 40, generator=g) + 2.0 * torch.randn(3000, 40, generator=g),
        2: x @ torch.randn(30, 40, generator=g) + 0.1 * torch.randn(3000, 40, generator=g),
    }
    best, profile = choose_layer(x, targets)
    assert best == 2 and set(profile) == {0, 1, 2}
    assert profile[2] > profile[1] > profile[0]
