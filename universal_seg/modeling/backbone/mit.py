"""Mix Transformer (MiT-B0..B5), the SegFormer encoder (Xie et al., NeurIPS 2021), as a detectron2 backbone.

Module names equal the official NVlabs code (``patch_embed{1-4}``, ``block{1-4}``, ``norm{1-4}``,
``attn.q/kv/proj/sr/norm``, ``mlp.fc1/dwconv.dwconv/fc2``) so NVlabs ``mit_b*.pth`` load directly;
HuggingFace and full-SegFormer checkpoints go through :func:`.mit_convert.convert_mit_checkpoint`.
Stage k output has spatial size ``ceil(H / 2^(k+1))`` (overlapping convs with padding k//2).
"""

from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from torch import nn

from ...layers import DropPath, init_transformer_weights, linear_drop_path_rates, tokens_to_map
from ...ops import Linear
from .common import RES_NAMES, FreezableBackbone, check_out_features, check_variant

# Paper table (models.md): dims, depths; heads 1,2,5,8; sr 8,4,2,1; mlp ratio 4. paper_params_m = encoder only.
MIT_VARIANTS = {
    "B0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), paper_params_m=3.4),
    "B1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2), paper_params_m=13.1),
    "B2": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), paper_params_m=24.2),
    "B3": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3), paper_params_m=44.0),
    "B4": dict(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3), paper_params_m=60.8),
    "B5": dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3), paper_params_m=81.4),
}
MIT_HEADS = (1, 2, 5, 8)
MIT_SR_RATIOS = (8, 4, 2, 1)


class OverlapPatchEmbed(nn.Module):
    """Conv(k, stride, padding k//2) + LayerNorm. [B, Cin, H, W] -> ([B, h*w, C], h, w), h = ceil(H/stride)."""

    def __init__(self, patch_size, stride, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientAttention(nn.Module):
    """Self-attention whose keys/values come from a map reduced sr x sr by a strided conv.
    forward: x [B, h*w, C], h, w -> [B, h*w, C]."""

    def __init__(self, dim, num_heads, sr_ratio, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = Linear(dim, dim, bias=qkv_bias)
        self.kv = Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, h, w):
        B, N, C = x.shape
        nh = self.num_heads
        q = self.q(x).reshape(B, N, nh, C // nh).transpose(1, 2)
        if self.sr_ratio > 1:
            r = self.sr(tokens_to_map(x, h, w)).flatten(2).transpose(1, 2)
            r = self.norm(r)
        else:
            r = x
        kv = self.kv(r).reshape(B, -1, 2, nh, C // nh).permute(2, 0, 3, 1, 4)
        attn = (q @ kv[0].transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ kv[1]).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class DWConv(nn.Module):
    """Depthwise 3x3 conv on tokens. [B, h*w, C] -> [B, h*w, C]."""

    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x, h, w):
        return self.dwconv(tokens_to_map(x, h, w)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Linear C->4C, depthwise 3x3, GELU, Linear 4C->C."""

    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x, h, w):
        x = self.drop(self.act(self.dwconv(self.fc1(x), h, w)))
        return self.drop(self.fc2(x))


class MiTBlock(nn.Module):
    """Pre-norm block: x += Attn(LN x); x += MixFFN(LN x). x [B, h*w, C]."""

    def __init__(self, dim, num_heads, sr_ratio, mlp_ratio=4.0, drop_path=0.0, norm_eps=1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = EfficientAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x, h, w):
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixVisionTransformer(FreezableBackbone):
    """MiT encoder. forward: images [B, 3, H, W] -> {"res{k+2}": [B, embed_dims[k], ceil(H/2^(k+2)), ...]}.

    ``norm_eps`` is the LayerNorm eps of the blocks and stage norms (NVlabs 1e-6; HF transformers uses 1e-5).
    Freezing groups: 0 = patch_embed1; k = block{k} + norm{k} (+ patch_embed{k+1}).
    """

    def __init__(
        self,
        embed_dims=(32, 64, 160, 256),
        depths=(2, 2, 2, 2),
        num_heads=MIT_HEADS,
        sr_ratios=MIT_SR_RATIOS,
        mlp_ratio=4.0,
        in_chans=3,
        drop_path_rate=0.1,
        norm_eps=1e-6,
        out_features=RES_NAMES,
        freeze_at=0,
    ):
        super().__init__()
        self._out_features = check_out_features(out_features, RES_NAMES, "MODEL.MIT.OUT_FEATURES")
        dpr = linear_drop_path_rates(drop_path_rate, depths)
        for i in range(4):
            k, s = (7, 4) if i == 0 else (3, 2)
            cin = in_chans if i == 0 else embed_dims[i - 1]
            self.add_module(f"patch_embed{i + 1}", OverlapPatchEmbed(k, s, cin, embed_dims[i]))
        for i in range(4):
            self.add_module(
                f"block{i + 1}",
                nn.ModuleList(
                    [
                        MiTBlock(embed_dims[i], num_heads[i], sr_ratios[i], mlp_ratio, dpr[i][j], norm_eps)
                        for j in range(depths[i])
                    ]
                ),
            )
            self.add_module(f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=norm_eps))
        self._shapes = {n: ShapeSpec(channels=embed_dims[i], stride=4 * 2**i) for i, n in enumerate(RES_NAMES)}
        self._last_stage = max(RES_NAMES.index(n) for n in self._out_features)
        self.apply(self._init_weights)
        self.freeze(freeze_at)

    @staticmethod
    def _init_weights(m):
        init_transformer_weights(m)
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def freeze_groups(self):
        groups = [[self.patch_embed1]]
        for i in range(1, 5):
            groups.append(
                [getattr(self, f"block{i}"), getattr(self, f"norm{i}"), getattr(self, f"patch_embed{i + 1}", None)]
            )
        return groups

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x):
        outs = {}
        for i in range(self._last_stage + 1):
            x, h, w = getattr(self, f"patch_embed{i + 1}")(x)
            for blk in getattr(self, f"block{i + 1}"):
                x = blk(x, h, w)
            x = getattr(self, f"norm{i + 1}")(x)
            x = tokens_to_map(x, h, w)
            if RES_NAMES[i] in self._out_features:
                outs[RES_NAMES[i]] = x
        return outs


def mit(variant: str, **kwargs) -> MixVisionTransformer:
    """MiT-B0..B5 from the paper table; ``kwargs`` override (drop_path_rate, out_features, freeze_at, ...)."""
    v = check_variant(variant, MIT_VARIANTS, "MODEL.MIT.VARIANT")
    return MixVisionTransformer(embed_dims=v["embed_dims"], depths=v["depths"], **kwargs)


@BACKBONE_REGISTRY.register()
def MiTBackbone(cfg, input_shape):
    """MiT from MODEL.MIT.{VARIANT, DROP_PATH_RATE, OUT_FEATURES} and MODEL.BACKBONE.FREEZE_AT."""
    return mit(
        cfg.MODEL.MIT.VARIANT,
        in_chans=input_shape.channels,
        drop_path_rate=cfg.MODEL.MIT.DROP_PATH_RATE,
        out_features=cfg.MODEL.MIT.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
