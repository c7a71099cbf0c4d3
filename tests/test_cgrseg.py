"""CGRSeg (EfficientFormerV2 + CGRSeg head): RCM / RCA against direct computations, the DPG pieces, each ADE20K config
builds, parameter counts and GFLOPs against the paper, the recipe, and one training / inference step of the mini config.

Measured at 512x512, 150 classes (fvcore, one multiply-add = one flop), EfficientFormerV2 from timm:

    variant  params (M)            GFLOPs all ops   GFLOPs w/o matmul+bmm   paper (params / GFLOPs)
    T        9.351                 4.621            4.039                   9.4 / 4.0
    B        19.095 (5 RCMs 18.090) 8.739           7.743                   18.1 / 7.6
    L        35.651                16.346           15.015                  35.7 / 14.9

- GFLOPs: the paper's numbers come from mmseg's get_flops (mmcv's module-hook counter), which sees nn.Modules only and
  so misses the functional ``q @ k`` / ``attn @ v`` matmuls of EfficientFormerV2's attention and the head's
  prototype bmm's. fvcore counts them (T: 0.503 + 0.079 G): full counts are +15% over the paper; without
  matmul / bmm they are within 1% (T) and 2% (B). The tests compare the latter with the paper and keep the former
  (and B's exact parameter count) as regression pins, in tests named so.
- Params: T and L match. B, with the official config's 6 pyramid-context RCMs (also models.md), is 19.10M, +5.5% over
  the paper's 18.1M; one context RCM on 64+144+288 = 496 channels has 4C^2 + 42C = 1.005M parameters, and with 5 the
  count is 18.09M. So the paper's B figure appears to be for 5 context RCMs; the model keeps the released config's 6.
"""

import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import load_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from torch import nn

import universal_seg.data  # noqa: F401
import universal_seg.modeling  # noqa: F401
from universal_seg.modeling.heads import CGRSegHead
from universal_seg.modeling.heads.cgrseg_modules import (
    RCM,
    DynamicPrototypeGate,
    RectangularSelfCalibrationAttention,
    class_prototypes,
    pyramid_pool,
)
from universal_seg.modeling.meta_arch import PerPixelSegmentor

MINI = "configs/mini/semantic/cgrseg_t.yaml"
PAPER = {"t": (9.4, 4.0), "b": (18.1, 7.6), "l": (35.7, 14.9)}  # params (M), GFLOPs at 512x512
# regression pins (our own earlier measurements, not independent truths)
REGRESSION_PIN_ALL_OPS_GFLOPS = {"t": 4.621, "b": 8.739}
REGRESSION_PIN_B_PARAMS_M = 19.095


def _randomize_norms(module: nn.Module) -> None:
    """Non-trivial BN affine parameters and running statistics (eval mode then uses them)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)


def _bn(x, bn):
    return (x - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        bn.running_var.view(1, -1, 1, 1) + bn.eps
    ) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def test_rca_strip_pooling_is_row_plus_column_mean():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) ** 1.5
    g = RectangularSelfCalibrationAttention.strip_pool(x)
    expected = torch.empty_like(x)
    for b in range(2):
        for c in range(3):
            for i in range(4):
                for j in range(5):
                    expected[b, c, i, j] = sum(x[b, c, i, :].tolist()) / 5 + sum(x[b, c, :, j].tolist()) / 4
    assert torch.allclose(g, expected, rtol=1e-6)


def test_rcm_equals_direct_computation():
    torch.manual_seed(0)
    C, k = 4, 5
    rcm = RCM(C, band_kernel_size=k, square_kernel_size=3, layer_scale_init=0.5).eval()
    _randomize_norms(rcm)
    with torch.no_grad():
        rcm.gamma.uniform_(0.5, 1.5)
    x = torch.randn(2, C, 6, 7)
    t = rcm.token_mixer
    with torch.no_grad():
        loc = F.conv2d(x, t.dwconv_hw.weight, t.dwconv_hw.bias, padding=1, groups=C)
        g = x.mean(dim=3, keepdim=True) + x.mean(dim=2, keepdim=True)  # [B,C,H,1] + [B,C,1,W]
        h = F.conv2d(g, t.excite[0].weight, t.excite[0].bias, padding=(0, k // 2), groups=C)  # 1 x k
        h = F.relu(_bn(h, t.excite[1]))
        att = torch.sigmoid(F.conv2d(h, t.excite[3].weight, t.excite[3].bias, padding=(k // 2, 0), groups=C))
        y = _bn(att * loc, rcm.norm)
        y = F.conv2d(F.gelu(F.conv2d(y, rcm.mlp.fc1.weight, rcm.mlp.fc1.bias)), rcm.mlp.fc2.weight, rcm.mlp.fc2.bias)
        expected = x + rcm.gamma.view(1, -1, 1, 1) * y
        got = rcm(x)
    assert t.excite[0].weight.shape == (C, 1, 1, k) and t.excite[3].weight.shape == (C, 1, k, 1)
    assert rcm.mlp.fc1.out_channels == 2 * C
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(RCM(C).gamma, torch.full((C,), 1e-6))


def test_pyramid_pool_and_prototypes():
    xs = [torch.randn(1, 2, 16, 20), torch.randn(1, 3, 8, 10), torch.randn(1, 5, 4, 5)]
    p = pyramid_pool(xs)  # 1/32 (4x5) -> 1/64 (2x3, ceil)
    assert p.shape == (1, 10, 2, 3)
    assert torch.allclose(p[:, 5:], F.adaptive_avg_pool2d(xs[2], (2, 3)))
    feats, logits = torch.randn(2, 3, 4, 5), torch.randn(2, 7, 4, 5)
    protos = class_prototypes(feats, logits)
    assert protos.shape == (2, 3, 7, 1)
    w = logits.flatten(2).softmax(-1)  # [B, K, HW]
    assert torch.allclose(protos[1, :, 4, 0], (feats[1].flatten(1) * w[1, 4]).sum(-1), atol=1e-6)
    gate = DynamicPrototypeGate(3, 3)
    x = torch.randn(2, 3, 4, 5)
    assert torch.allclose(gate(x, protos), 0.5 * x)  # zero-initialised last conv: sigmoid(0) = 0.5
    assert gate.pool(protos).shape == (2, 3, 1, 1)


@pytest.mark.parametrize(
    "variant,backbone,channels,rcms,k", [("t", "S1", 128, 5, 11), ("b", "S2", 256, 6, 11), ("l", "L", 256, 5, 9)]
)
def test_configs_build_and_params_match_paper(variant, backbone, channels, rcms, k):
    """Paper params T 9.4M, L 35.7M within 5%; B: the paper's 18.1M within 1% once one of the 6 context RCMs of the
    released config is left out (measured T 9.351M, B 19.095M / 18.090M with 5 RCMs, L 35.651M)."""
    cfg = load_cfg(f"configs/ade20k/semantic/cgrseg_{variant}.yaml")
    assert cfg.MODEL.EFFICIENTFORMERV2.VARIANT == backbone
    model = _meta_model(variant)
    head = model.sem_seg_head
    assert isinstance(head, CGRSegHead) and head.in_channels == list(
        model.backbone.output_shape()[n].channels for n in ("res3", "res4", "res5")
    )
    assert len(head.trans) == rcms and head.trans[0].token_mixer.excite[0].kernel_size == (1, k)
    assert head.meta[0].token_mixer.excite[3].kernel_size == (k, 1) and head.conv_seg.in_channels == channels
    n = sum(p.numel() for p in model.parameters()) / 1e6
    if variant == "b":
        per_rcm = sum(p.numel() for p in head.trans[0].parameters()) / 1e6
        assert n - per_rcm == pytest.approx(PAPER["b"][0], rel=0.01)
    else:
        assert n == pytest.approx(PAPER[variant][0], rel=0.05)


def test_regression_pin_b_params():
    """Regression pin (our own earlier count): CGRSeg-B with the released config's 6 context RCMs, 19.095M."""
    n = sum(p.numel() for p in _meta_model("b").parameters()) / 1e6
    assert n == pytest.approx(REGRESSION_PIN_B_PARAMS_M, abs=0.01)


@functools.lru_cache(maxsize=None)
def _meta_model(variant):
    """The ADE20K config's model on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return PerPixelSegmentor(load_cfg(f"configs/ade20k/semantic/cgrseg_{variant}.yaml"))


@functools.lru_cache(maxsize=None)
def _gflops_at_512(variant):
    """(all ops, all ops less matmul + bmm) in GFLOPs at 512x512 (fvcore, one multiply-add = one flop); computed once
    per variant for the paper comparison and the regression pin."""
    from fvcore.nn import FlopCountAnalysis

    model = build_model(
        load_cfg(f"configs/ade20k/semantic/cgrseg_{variant}.yaml", "MODEL.SEM_SEG_HEAD.NORM", "BN")
    ).eval()

    class Logits(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.sem_seg_head(self.m.backbone(x))["sem_seg_logits"]

    flops = FlopCountAnalysis(Logits(model), torch.zeros(1, 3, 512, 512))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    by_op = flops.by_operator()
    total = flops.total() / 1e9
    return total, total - (by_op.get("matmul", 0) + by_op.get("bmm", 0)) / 1e9


@pytest.mark.parametrize("variant", ["t", "b"])
def test_gflops_at_512_match_paper(variant):
    """Paper (mmseg get_flops, which misses functional matmuls): T 4.0, B 7.6 GFLOPs; our count without matmul/bmm
    within 5% (measured T 4.039, B 7.743)."""
    assert _gflops_at_512(variant)[1] == pytest.approx(PAPER[variant][1], rel=0.05)


@pytest.mark.parametrize("variant", ["t", "b"])
def test_regression_pin_gflops_all_ops_at_512(variant):
    """Regression pin (our own earlier measurement, no paper counts these): all ops incl. matmul/bmm, T 4.621,
    B 8.739 GFLOPs, within 1%."""
    assert _gflops_at_512(variant)[0] == pytest.approx(REGRESSION_PIN_ALL_OPS_GFLOPS[variant], rel=0.01)


def test_ade20k_recipe():
    cfg = load_cfg("configs/ade20k/semantic/cgrseg_b.yaml")
    s = cfg.SOLVER
    assert (s.OPTIMIZER, s.WEIGHT_DECAY, s.WEIGHT_DECAY_NORM) == ("ADAMW", 0.01, 0.0)
    assert s.BASE_LR * s.BACKBONE_MULTIPLIER == pytest.approx(1.2e-4) and s.BASE_LR == pytest.approx(1.2e-3)
    assert (s.LR_SCHEDULER_NAME, s.POLY_LR_POWER, s.WARMUP_ITERS, s.MAX_ITER, s.IMS_PER_BATCH) == (
        "WarmupPolyLR",
        1.0,
        1500,
        160000,
        16,
    )
    assert not s.CLIP_GRADIENTS.ENABLED and not s.AMP.ENABLED
    assert tuple(cfg.INPUT.CROP.SIZE) == (512, 512) and cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 0.75
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150 and cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM == 256
    assert cfg.MODEL.EFFICIENTFORMERV2.DROP_PATH_RATE == 0.02  # official efficientformerv2_s2_feat


def test_rejects_invalid_settings():
    cfg = load_cfg(MINI, "MODEL.SEM_SEG_HEAD.CGRSEG.BAND_KERNEL_SIZE", "10")
    with pytest.raises(ValueError, match="CGRSEG.CONTEXT_RCMS=5 / BAND_KERNEL_SIZE=10"):
        build_model(cfg)
    shapes = {"res3": ShapeSpec(channels=8, stride=8), "res4": ShapeSpec(channels=8, stride=16)}
    with pytest.raises(ValueError, match="three feature levels"):
        CGRSegHead(shapes, num_classes=3)


def test_mini_train_step_and_inference():
    torch.manual_seed(0)
    model = build_model(load_cfg(MINI)).train()
    inputs = [
        {"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8), "sem_seg": torch.randint(0, 21, (96, 128))}
        for _ in range(2)
    ]
    losses = model(inputs)
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
    losses["loss_sem_seg"].backward()
    head = model.sem_seg_head
    for p in (
        head.trans[0].gamma,
        head.lgc.channel_mul_conv[3].weight,
        head.conv_seg.weight,
        next(model.backbone.parameters()),
    ):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    model.eval()
    with torch.no_grad():
        logits = head(model.backbone(torch.randn(1, 3, 96, 128)))["sem_seg_logits"]
        out = model([{"image": inputs[0]["image"]}])[0]["sem_seg"]
    assert logits.shape == (1, 21, 12, 16)  # stride 8
    assert out.shape == (21, 96, 128) and torch.isfinite(out).all()
