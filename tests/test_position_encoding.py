"""DETR's normalised sine position encoding against the formula written out per channel, with and without the cache."""

import math

import torch

from universal_seg.modeling.position_encoding import PositionEmbeddingSine


def formula(H, W, feats, temperature=10000.0):
    """[2 * feats, H, W]: y channels then x; channel 2k: sin(p / T^(2k/feats)), 2k+1: cos(p / T^(2k/feats))
    with p = (index + 1) / (size + 1e-6) * 2 pi."""
    out = torch.zeros(2 * feats, H, W, dtype=torch.float64)
    for axis, size in ((0, H), (1, W)):
        for i in range(size):
            p = (i + 1) / (size + 1e-6) * 2 * math.pi
            for c in range(feats):
                freq = temperature ** (2 * (c // 2) / feats)
                value = math.sin(p / freq) if c % 2 == 0 else math.cos(p / freq)
                if axis == 0:
                    out[c, i, :] = value
                else:
                    out[feats + c, :, i] = value
    return out


def test_matches_formula_cached_and_masked():
    pe = PositionEmbeddingSine(8, normalize=True)
    x = torch.zeros(2, 3, 4, 6)
    cached = pe(x)
    assert cached.shape == (2, 16, 4, 6)
    expected = formula(4, 6, 8)
    torch.testing.assert_close(cached[1].double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pe(x, torch.zeros(2, 4, 6, dtype=torch.bool)), cached)  # the uncached path
    assert pe(torch.zeros(1, 3, 4, 6)).data_ptr() == cached.data_ptr()  # computed once per size
    # padding: a mask over the right part normalises over the valid width only
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[:, :, 4:] = True
    torch.testing.assert_close(
        pe(torch.zeros(1, 3, 4, 6), mask)[0, :, :, :4].double(), formula(4, 4, 8), rtol=1e-5, atol=1e-5
    )
