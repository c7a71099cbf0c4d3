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


def _frozen_bn_resnet(fold: bool):
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_backbone

    from universal_seg.modeling.backbone import add_backbone_config

    cfg = get_cfg()
    add_backbone_config(cfg)
    # "ResNetBackbone" folds; detectron2's own builder is the reference (conv, then FrozenBatchNorm2d)
    cfg.MODEL.BACKBONE.NAME = "ResNetBackbone" if fold else "build_resnet_backbone"
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.STRIDE_IN_1X1, cfg.MODEL.BACKBONE.FREEZE_AT = 50, False, 0
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    torch.manual_seed(0)
    model = build_backbone(cfg, ShapeSpec(channels=3))
    with torch.no_grad():  # non-trivial frozen statistics and affine (FrozenBatchNorm2d keeps all four as buffers)
        for name, buf in model.named_buffers():
            if name.endswith(("running_var", "norm.weight")):
                buf.uniform_(0.5, 2.0)
            elif name.endswith(("running_mean", "norm.bias")):
                buf.normal_(0, 0.2)
    return model


def _rel_err(got, expected):
    return ((got.double() - expected).abs().max() / expected.abs().max()).item()


def test_folded_frozen_bn_resnet_equals_detectron2s_conv_then_bn():
    """ResNet-50 with every conv + FrozenBN run as one conv against detectron2's unfolded ResNet with the same
    weights, evaluated in float64 (the truth): same state-dict keys; features within fp32 rounding in eval, also
    after the weights change (the cache follows); gradients within fp32 rounding in training."""
    from universal_seg.layers import FoldedFrozenBNConv2d

    reference, folded = _frozen_bn_resnet(False).double(), _frozen_bn_resnet(True)
    assert list(folded.state_dict()) == list(reference.state_dict())
    folded.load_state_dict(reference.state_dict())
    assert sum(isinstance(m, FoldedFrozenBNConv2d) for m in folded.modules()) == 53  # stem + 16 x 3 + 4 shortcuts
    x = torch.randn(2, 3, 64, 96)
    for _ in range(2):
        with torch.no_grad():
            expected, got = reference(x.double()), folded(x)
        for k in expected:
            assert _rel_err(got[k], expected[k]) <= 1e-5, k  # observed ~2e-6, as detectron2's own fp32 path
        with torch.no_grad():  # an optimizer step in place: the cached folded weights must follow
            for a, b in zip(reference.parameters(), folded.parameters()):
                a.mul_(1.01)
                b.mul_(1.01)
    sum(v.square().mean() for v in reference(x.double()).values()).backward()
    sum(v.square().mean() for v in folded(x).values()).backward()
    for (name, a), b in zip(reference.named_parameters(), folded.parameters()):
        assert _rel_err(b.grad, a.grad) <= 1e-4, name
