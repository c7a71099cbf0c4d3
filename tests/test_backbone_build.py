"""Every backbone builds from a config, runs forward + backward, returns what output_shape() declares at
ceil(input / stride), honours FREEZE_AT and drop-path, rejects bad configs with one clear error, and feeds
the MSDeformAttn pixel decoder."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from universal_seg.config import add_universal_seg_config
from universal_seg.modeling.backbone import add_backbone_config
from universal_seg.modeling.pixel_decoder import build_pixel_decoder


def _swin(cfg):
    cfg.MODEL.BACKBONE.NAME = "SwinTransformerBackbone"
    cfg.MODEL.SWIN.VARIANT = "T"


def _swin_ape(cfg):
    _swin(cfg)
    cfg.MODEL.SWIN.APE = True


def _mit(cfg):
    cfg.MODEL.BACKBONE.NAME = "MiTBackbone"
    cfg.MODEL.MIT.VARIANT = "B0"


def _vit(cfg):
    cfg.MODEL.BACKBONE.NAME = "ViTBackbone"
    cfg.MODEL.VIT.VARIANT, cfg.MODEL.VIT.OUT_INDICES, cfg.MODEL.VIT.PYRAMID_CHANNELS = "T", [2, 5, 8, 11], 64


def _vit_single(cfg):
    _vit(cfg)
    cfg.MODEL.VIT.OUT_INDICES, cfg.MODEL.VIT.OUT_NORM = [-1], True


def _resnet(cfg):
    """ResNet-50 as configs/*/Base-*.yaml set it (torchvision stride placement, FrozenBN, res2..res5)."""
    cfg.MODEL.BACKBONE.NAME, cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.STRIDE_IN_1X1 = "ResNetBackbone", 50, False
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]


def _timm(cfg):
    cfg.MODEL.BACKBONE.NAME = "build_timm_backbone"
    cfg.MODEL.TIMM.MODEL_NAME = "resnet18"


def _effv2(cfg):
    cfg.MODEL.BACKBONE.NAME = "EfficientFormerV2Backbone"
    cfg.MODEL.EFFICIENTFORMERV2.VARIANT = "S0"


BACKBONES = {
    "resnet50": _resnet,
    "swin": _swin,
    "swin_ape": _swin_ape,
    "mit_b0": _mit,
    "vit_t": _vit,
    "vit_t_single": _vit_single,
    "timm_resnet18": _timm,
    "effformerv2_s0": _effv2,
}
CHANNELS = {
    "resnet50": [256, 512, 1024, 2048],
    "swin": [96, 192, 384, 768],
    "swin_ape": [96, 192, 384, 768],
    "mit_b0": [32, 64, 160, 256],
    "vit_t": [64] * 4,
    "vit_t_single": [64] * 4,
    "timm_resnet18": [64, 128, 256, 512],
    "effformerv2_s0": [32, 48, 96, 176],
}
TRANSFORMERS = {"swin": "SWIN", "mit_b0": "MIT", "vit_t": "VIT", "effformerv2_s0": "EFFICIENTFORMERV2"}


def make_cfg(name, freeze_at=0, add_config=add_backbone_config, **overrides):
    cfg = get_cfg()
    add_config(cfg)
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    BACKBONES[name](cfg)
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, value)
    return cfg


def build(name, **kw):
    torch.manual_seed(0)
    return build_backbone(make_cfg(name, **kw), ShapeSpec(channels=3))


@pytest.mark.parametrize("name", list(BACKBONES))
def test_forward_backward_shapes(name):
    model = build(name).train()
    shapes = model.output_shape()
    assert list(shapes) == ["res2", "res3", "res4", "res5"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    assert [s.channels for s in shapes.values()] == CHANNELS[name]
    assert model.size_divisibility in (0, 32)
    for hw in [(250, 333), (256, 320)]:  # odd size without autograd (runtime), then 256x320 with backward
        with torch.set_grad_enabled(hw == (256, 320)):
            out = model(torch.randn(1, 3, *hw))
        assert list(out) == list(shapes)
        for k, y in out.items():
            s = shapes[k].stride
            assert tuple(y.shape) == (1, shapes[k].channels, math.ceil(hw[0] / s), math.ceil(hw[1] / s)), (k, hw)
    loss = sum((y.float() ** 2).mean() for y in out.values())
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


@pytest.mark.parametrize("name", ["resnet50", "swin", "mit_b0", "vit_t", "timm_resnet18", "effformerv2_s0"])
def test_freeze_at(name):
    trainable = []
    total = sum(p.numel() for p in build(name, freeze_at=0).parameters())
    for freeze_at in range(6):
        model = build(name, freeze_at=freeze_at)
        trainable.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
    assert trainable[0] == total and trainable[5] == 0
    assert all(a > b for a, b in zip(trainable, trainable[1:])), trainable
    if name == "resnet50":
        return  # detectron2's ResNet: frozen stages use FrozenBN and have no dropout; no eval-mode pinning
    # frozen parts stay in eval mode when the model trains
    model = build(name, freeze_at=2).train()
    frozen = [
        m
        for m in model.modules()
        if m is not model
        and all(not p.requires_grad for p in m.parameters(recurse=False))
        and any(True for _ in m.parameters(recurse=False))
    ]
    assert frozen and not any(m.training for m in frozen)


@pytest.mark.parametrize("name", list(TRANSFORMERS))
def test_drop_path_rate_is_honoured(name):
    model = build(name, **{f"MODEL.{TRANSFORMERS[name]}.DROP_PATH_RATE": 0.5})
    rates = [
        getattr(m, "rate", getattr(m, "drop_prob", None)) for m in model.modules() if type(m).__name__ == "DropPath"
    ]
    assert rates and max(rates) == pytest.approx(0.5) and min(rates) < 0.5
    x = torch.randn(2, 3, 64, 96)
    torch.manual_seed(1)
    a = model.train()(x)["res5"]
    b = model(x)["res5"]
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)["res5"], model(x)["res5"])


@pytest.mark.parametrize("name,key", [("swin", "SWIN"), ("vit_t", "VIT")])
def test_gradient_checkpointing_gives_same_gradients(name, key):
    grads = []
    for use_ckpt in (False, True):
        model = build(name, **{f"MODEL.{key}.USE_CHECKPOINT": use_ckpt, f"MODEL.{key}.DROP_PATH_RATE": 0.0}).train()
        x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
        sum(y.sum() for y in model(x).values()).backward()
        layer = model.layers[2].blocks[1] if name == "swin" else model.blocks[5]
        grads.append(layer.attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_vit_without_pyramid_outputs_layers():
    model = build("vit_t", **{"MODEL.VIT.FEATURE_PYRAMID": False, "MODEL.VIT.OUT_INDICES": [3, 7, -1]})
    assert list(model.output_shape()) == ["layer3", "layer7", "layer11"]
    out = model(torch.randn(1, 3, 64, 80))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (1, 192, 4, 5) for k in ["layer3", "layer7", "layer11"]}


def test_subset_of_out_features():
    for name in ["swin", "mit_b0", "vit_t", "timm_resnet18", "effformerv2_s0"]:
        key = {
            "swin": "SWIN",
            "mit_b0": "MIT",
            "vit_t": "VIT",
            "timm_resnet18": "TIMM",
            "effformerv2_s0": "EFFICIENTFORMERV2",
        }[name]
        model = build(name, **{f"MODEL.{key}.OUT_FEATURES": ["res3", "res4"]})
        out = model(torch.randn(1, 3, 64, 64))
        assert list(out) == list(model.output_shape()) == ["res3", "res4"]


@pytest.mark.parametrize(
    "name,overrides,error,match",
    [
        ("mit_b0", {"MODEL.MIT.VARIANT": "B9"}, KeyError, "MODEL.MIT.VARIANT='B9' is not a known variant"),
        ("vit_t", {"MODEL.VIT.VARIANT": "H"}, KeyError, "MODEL.VIT.VARIANT='H' is not a known variant"),
        ("effformerv2_s0", {"MODEL.EFFICIENTFORMERV2.VARIANT": "S9"}, KeyError, "VARIANT='S9'"),
        ("swin", {"MODEL.SWIN.VARIANT": "H"}, KeyError, "MODEL.SWIN.VARIANT='H' is not a known variant"),
        ("resnet50", {"MODEL.RESNETS.DEPTH": 152}, KeyError, "MODEL.RESNETS.DEPTH=152 is not a known variant"),
        ("swin", {"MODEL.SWIN.OUT_FEATURES": ["res2", "res6"]}, ValueError, "MODEL.SWIN.OUT_FEATURES"),
        ("mit_b0", {"MODEL.MIT.OUT_FEATURES": []}, ValueError, "MODEL.MIT.OUT_FEATURES"),
        ("vit_t", {"MODEL.VIT.OUT_INDICES": [3, 7, 11]}, ValueError, "1 or 4 entries"),
        ("vit_t", {"MODEL.VIT.OUT_INDICES": [12]}, ValueError, "MODEL.VIT.OUT_INDICES"),
        (
            "timm_resnet18",
            {"MODEL.TIMM.MODEL_NAME": "vit_tiny_patch16_224"},
            ValueError,
            r"no feature level at stride \[4",
        ),
        ("timm_resnet18", {"MODEL.TIMM.MODEL_NAME": "no_such_net"}, KeyError, "not a timm model"),
        ("resnet50", {"MODEL.RESNETS.DEPTH": 77}, KeyError, "MODEL.RESNETS.DEPTH=77"),
        ("swin", {"MODEL.BACKBONE.FREEZE_AT": 7}, ValueError, "FREEZE_AT=7"),
    ],
)
def test_bad_config_errors(name, overrides, error, match):
    with pytest.raises(error, match=match):
        build(name, **overrides)


PIXEL_DECODER_BACKBONES = ["resnet50", "swin", "mit_b0", "vit_t", "timm_resnet18", "effformerv2_s0"]


@pytest.mark.parametrize("name", PIXEL_DECODER_BACKBONES)
def test_backbone_feeds_msdeform_pixel_decoder(name):
    cfg = make_cfg(name, add_config=add_universal_seg_config)
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 64
    torch.manual_seed(0)
    backbone = build_backbone(cfg, ShapeSpec(channels=3)).train()
    decoder = build_pixel_decoder(cfg, backbone.output_shape()).train()
    mask_features, multi_scale = decoder(backbone(torch.randn(1, 3, 256, 320)))
    assert mask_features.shape == (1, 32, 64, 80)
    assert [tuple(f.shape[-2:]) for f in multi_scale] == [(8, 10), (16, 20), (32, 40)]
    (mask_features.mean() + sum(f.mean() for f in multi_scale)).backward()
    assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad)
