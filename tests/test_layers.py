"""Shared blocks (universal_seg.layers) against written-out formulas and hand-computed cases."""

import pytest
import torch

from universal_seg.layers import DropPath, LayerNorm2d, ceil_div, linear_drop_path_rates, pad_to_multiple


def test_layer_norm_2d_normalises_each_pixel_over_channels():
    torch.manual_seed(0)
    norm = LayerNorm2d(5, eps=1e-6).double()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight[:, None, None] + norm.bias[:, None, None]
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=1e-12)


def test_linear_drop_path_rates_hand_computed():
    assert linear_drop_path_rates(0.3, [2, 2]) == [[0.0, pytest.approx(0.1)], [pytest.approx(0.2), 0.3]]  # 0.3 i / 3
    assert linear_drop_path_rates(0.2, [3]) == [[0.0, pytest.approx(0.1), 0.2]]
    assert linear_drop_path_rates(0.5, [1]) == [[0.0]]


def test_drop_path_is_identity_in_eval_and_unbiased_in_training():
    x = torch.ones(20000, 3)
    layer = DropPath(0.25)
    assert torch.equal(layer.eval()(x), x)
    y = layer.train()(x)
    kept = y[:, 0] != 0
    assert torch.all(y[kept] == 1 / 0.75) and torch.all(y[~kept] == 0)  # whole samples, rescaled by 1 / keep
    assert abs(kept.float().mean().item() - 0.75) < 0.02


def test_pad_to_multiple_and_ceil_div():
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).view(1, 2, 5, 7)
    y = pad_to_multiple(x, 4)
    assert y.shape == (1, 2, 8, 8)
    assert torch.equal(y[..., :5, :7], x) and y[..., 5:, :].abs().sum() == 0 and y[..., :, 7:].abs().sum() == 0
    assert pad_to_multiple(x, 1) is x
    assert [ceil_div(a, 4) for a in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]
