"""count_step_flops agrees with the analytic matmul count."""

import torch

from stitchplug.flops import count_step_flops


def test_matmul_flops_are_2mnk():
    m, n, k = 7, 5, 11
    a, b = torch.randn(m, k), torch.randn(k, n)
    assert count_step_flops(lambda: a @ b) == 2 * m * n * k


def test_forward_backward_counts_three_matmuls():
    m, n, k = 4, 6, 3
    a = torch.randn(m, k, requires_grad=True)
    w = torch.randn(k, n, requires_grad=True)
    # forward a@w, backward grad_a = g @ w.T and grad_w = a.T @ g: three matmuls of the same size
    assert count_step_flops(lambda: (a @ w).sum().backward()) == 3 * 2 * m * n * k


def test_elementwise_work_is_not_counted():
    x = torch.randn(100, 100)
    assert count_step_flops(lambda: (x * 2 + 1).exp()) == 0
