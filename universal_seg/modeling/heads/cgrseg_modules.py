"""Building blocks of CGRSeg (Ni et al., ECCV 2024): the rectangular self-calibration module (RCM) with its
attention (RCA), pyramid pooling of the context levels, the context-guided fusion of spatial reconstruction and the
dynamic prototype guided (DPG) gate.

Module and parameter names follow the official code (github.com/nizhenliang/CGRSeg, ``rcm.py`` / ``cgr_head.py`` /
``dpg_head.py``: ``token_mixer.dwconv_hw``, ``token_mixer.excite.{0,1,3}``, ``norm``, ``mlp.fc1`` / ``mlp.fc2``,
``gamma``, ``fuse1`` / ``fuse2``, ``conv_mask``, ``channel_mul_conv.{0,1,3}``) so that its weights map by prefix only.
"""

import torch
import torch.nn.functional as F
from detectron2.layers import get_norm
from torch import nn


class RectangularSelfCalibrationAttention(nn.Module):
    """RCA: ``out = att * loc`` for x [B, C, H, W] -> [B, C, H, W].

    - loc = depthwise ``square_kernel_size`` x ``square_kernel_size`` conv(x) (local detail);
    - g = mean_W(x) [B, C, H, 1] + mean_H(x) [B, C, 1, W], broadcast to [B, C, H, W] (the two strip poolings);
    - att = sigmoid(dw conv k x 1(ReLU(norm(dw conv 1 x k(g))))), a rectangular (cross-shaped) attention map.
    """

    def __init__(self, channels: int, band_kernel_size: int = 11, square_kernel_size: int = 3, norm: str = "BN"):
        super().__init__()
        if band_kernel_size % 2 == 0 or square_kernel_size % 2 == 0:
            raise ValueError(
                f"RCA kernels must be odd to keep the size, got band {band_kernel_size}, square {square_kernel_size}."
            )
        k = band_kernel_size
        self.dwconv_hw = nn.Conv2d(
            channels, channels, square_kernel_size, padding=square_kernel_size // 2, groups=channels
        )
        self.excite = nn.Sequential(
            nn.Conv2d(channels, channels, (1, k), padding=(0, k // 2), groups=channels),
            get_norm(norm, channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, (k, 1), padding=(k // 2, 0), groups=channels),
            nn.Sigmoid(),
        )

    @staticmethod
    def strip_pool(x: torch.Tensor) -> torch.Tensor:
        """g = average over W ([B, C, H, 1]) + average over H ([B, C, 1, W]) -> [B, C, H, W]."""
        # means, not adaptive pooling to (None, 1) / (1, None): the same averages, and exportable with symbolic sizes
        return x.mean(dim=-1, keepdim=True) + x.mean(dim=-2, keepdim=True)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> attention in (0, 1), [B, C, H, W]."""
        return self.excite(self.strip_pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x) * self.dwconv_hw(x)


class ConvMLP(nn.Module):
    """1x1 conv C -> hidden, GELU, 1x1 conv hidden -> C. [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RCM(nn.Module):
    """Rectangular self-calibration module, a MetaNeXt block with RCA as token mixer.
    x [B, C, H, W] -> x + gamma * ConvMLP(norm(RCA(x))), [B, C, H, W]; gamma (layer scale) starts at 1e-6."""

    def __init__(
        self,
        channels: int,
        band_kernel_size: int = 11,
        square_kernel_size: int = 3,
        mlp_ratio: float = 2.0,
        layer_scale_init: float = 1e-6,
        norm: str = "BN",
    ):
        super().__init__()
        self.token_mixer = RectangularSelfCalibrationAttention(channels, band_kernel_size, square_kernel_size, norm)
        self.norm = get_norm(norm, channels)
        self.mlp = ConvMLP(channels, int(mlp_ratio * channels))
        self.gamma = nn.Parameter(torch.full((channels,), float(layer_scale_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.token_mixer(x)))
        return x + y * self.gamma.view(1, -1, 1, 1)


def _init_conv_module(conv: nn.Conv2d) -> None:
    """mmcv ConvModule's init (the official head's ConvModules): kaiming normal, fan_out, ReLU gain; zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def pyramid_pool(features: list[torch.Tensor], stride: int = 2) -> torch.Tensor:
    """Adaptive-average-pool every level to the coarsest level's size divided by ``stride`` (ceil; 1/64 of the
    image for 1/32 and stride 2) and concatenate: [B, C_i, h_i, w_i] for each i -> [B, sum C_i, h, w]."""
    h, w = features[-1].shape[-2:]
    size = ((h - 1) // stride + 1, (w - 1) // stride + 1)
    # exporters (torch.export -> ONNX) turn adaptive pooling into a pooling with the example's fixed kernel; with
    # symbolic sizes the bins are written out as averaging matrices instead
    pool = adaptive_avg_pool2d_by_matrices if torch.compiler.is_compiling() else F.adaptive_avg_pool2d
    return torch.cat([pool(f, size) for f in features], dim=1)


def _bin_matrix(n_in, n_out, device) -> torch.Tensor:
    """[n_out, n_in] averaging matrix of adaptive pooling along one axis: row i is 1 / len over the bin
    [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out)) and 0 elsewhere (PyTorch's bins)."""
    i = torch.arange(n_out, device=device)[:, None]
    j = torch.arange(n_in, device=device)[None, :]
    start = torch.div(i * n_in, n_out, rounding_mode="floor")
    end = torch.div((i + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
    inside = ((j >= start) & (j < end)).float()
    return inside / inside.sum(1, keepdim=True)


def adaptive_avg_pool2d_by_matrices(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` as two products with bin-averaging matrices: x [B, C, H, W] ->
    [B, C, size[0], size[1]] (same bins; sums in another order). Exportable with symbolic sizes."""
    rows = _bin_matrix(x.shape[-2], size[0], x.device).to(x.dtype)  # [h, H]
    cols = _bin_matrix(x.shape[-1], size[1], x.device).to(x.dtype)  # [w, W]
    return rows @ x @ cols.t()


class HSigmoid(nn.Module):
    """relu6(x + 3) / 6."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


class ConvNorm(nn.Sequential):
    """1x1 conv (no bias) -> norm, no activation (mmcv ConvModule with act_cfg=None). [B, C_in, h, w] ->
    [B, C_out, h, w]."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "BN"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=not norm)
        self.bn = get_norm(norm, out_channels) if norm else nn.Identity()
        _init_conv_module(self.conv)


class DepthwiseConvNormAct(nn.Sequential):
    """Depthwise 1x1 conv (a per-channel scale; bias only without a norm) -> norm -> ReLU (the DPG head's
    ``linear_fuse``). [B, C, h, w] -> [B, C, h, w]."""

    def __init__(self, channels: int, norm: str = "BN"):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, groups=channels, bias=not norm)
        self.bn = get_norm(norm, channels) if norm else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        _init_conv_module(self.conv)


class ContextGuidedFusion(nn.Module):
    """Spatial reconstruction's fusion of one level: local [B, C_l, H, W], global context [B, C_l, h, w] (h <= H) ->
    ConvNorm1x1(local) * upsample(h_sigmoid(ConvNorm1x1(global))), [B, C_out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "BN"):
        super().__init__()
        self.fuse1 = ConvNorm(in_channels, out_channels, norm)
        self.fuse2 = ConvNorm(in_channels, out_channels, norm)
        self.act = HSigmoid()

    def forward(self, local: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        gate = F.interpolate(self.act(self.fuse2(context)), size=local.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse1(local) * gate


def class_prototypes(features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Soft class prototypes: features [B, C, H, W], coarse logits [B, K, H, W] -> [B, C, K, 1], the features
    averaged over space with weights softmax_{HW}(logits_k) for each class k (OCR's spatial gather, scale 1)."""
    b, c = features.shape[:2]
    probs = F.softmax(logits.flatten(2), dim=2)  # [B, K, HW]
    protos = torch.bmm(probs, features.reshape(b, c, -1).transpose(1, 2))  # [B, K, C]
    return protos.transpose(1, 2).unsqueeze(3)


class DynamicPrototypeGate(nn.Module):
    """DPG gate: features x [B, C, H, W], class prototypes [B, C, K, 1] -> x * sigmoid(t), [B, C, H, W], where
    t [B, C, 1, 1] = 1x1 -> LayerNorm -> ReLU -> 1x1 (zero-init, so the gate starts at 0.5) of the prototypes
    attention-pooled over the classes (softmax over K of a 1x1 conv C -> 1). The residual is added by the caller."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.conv_mask = nn.Conv2d(channels, 1, 1)
        self.channel_mul_conv = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.channel_mul_conv[-1].weight)
        nn.init.zeros_(self.channel_mul_conv[-1].bias)

    def pool(self, prototypes: torch.Tensor) -> torch.Tensor:
        """Attention pooling over the classes: [B, C, K, 1] -> [B, C, 1, 1]."""
        b, c = prototypes.shape[:2]
        weights = F.softmax(self.conv_mask(prototypes).reshape(b, 1, -1), dim=2)  # [B, 1, K]
        return torch.bmm(prototypes.reshape(b, c, -1), weights.transpose(1, 2)).reshape(b, c, 1, 1)

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.channel_mul_conv(self.pool(prototypes)))
