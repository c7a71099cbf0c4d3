"""Plain ViT (patch 16; T/S/B/L) with multi-level outputs and a simple feature pyramid (ViTDet, Li et al. 2022).

Parameter names equal timm's ``VisionTransformer`` (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2``, ``norm``) so timm ViT state dicts load after
:func:`checkpoint_filter_vit` drops the classifier. The position embedding is resized bicubically (with
antialias, cls entry kept) to the input's grid, as timm's ``dynamic_img_size`` does; inputs are zero-padded
at the bottom/right to a multiple of 16.

Outputs: with the pyramid, ``res2..res5`` at strides 4/8/16/32 (PYRAMID_CHANNELS each, spatial size
``ceil(H / stride)``). If one block is
chosen (OUT_INDICES of length 1) every level comes from it (ViTDet); with four, level k comes from the k-th.
Without the pyramid: ``layer{i}`` = block i's output [B, C, ceil(H/16), ceil(W/16)] for each chosen i.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from torch import nn

from ...layers import DropPath, LayerNorm2d, Mlp, ceil_div, linear_drop_path_rates, pad_to_multiple
from ...ops import Linear
from .common import RES_NAMES, FreezableBackbone, check_out_features, check_variant

# name: embed_dim, depth, num_heads (patch 16, mlp ratio 4); paper_params_m = timm ImageNet model.
VIT_VARIANTS = {
    "T": dict(embed_dim=192, depth=12, num_heads=3, paper_params_m=5.7),
    "S": dict(embed_dim=384, depth=12, num_heads=6, paper_params_m=22.1),
    "B": dict(embed_dim=768, depth=12, num_heads=12, paper_params_m=86.6),
    "L": dict(embed_dim=1024, depth=24, num_heads=16, paper_params_m=304.3),
}


class Attention(nn.Module):
    """Multi-head self-attention with one qkv Linear. x [B, N, C] -> [B, N, C]."""

    def __init__(self, dim, num_heads, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6). x [B, N, C] -> [B, N, C]."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Conv 16x16 stride 16. [B, 3, H, W] (H, W multiples of 16) -> [B, C, H/16, W/16]."""

    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x):
        return self.proj(x)


def resize_pos_embed(pos_embed: torch.Tensor, new_hw, num_prefix: int = 1) -> torch.Tensor:
    """[1, num_prefix + h*w, C] (square grid) -> [1, num_prefix + H*W, C]: bicubic (antialias) on the grid,
    prefix (cls) entries kept. Under ``torch.export`` (ONNX) the grid is always resized, and ``new_hw`` stays
    symbolic, so one graph serves every image size (a resize to the grid's own size is the identity)."""
    side = math.isqrt(int(pos_embed.shape[1]) - num_prefix)
    if not torch.compiler.is_exporting() and (int(new_hw[0]), int(new_hw[1])) == (side, side):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    C = grid.shape[-1]
    grid = grid.float().reshape(1, side, side, C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_hw, mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, C).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet pyramid: stride 4 (2 deconvs), 8 (1 deconv), 16 (identity), 32 (2x2 max-pool, ceil), each then
    1x1 conv + LN + 3x3 conv + LN to ``out_channels``. Input: list of 4 [B, C, h, w] -> dict res2..res5."""

    def __init__(self, dim, out_channels, names=RES_NAMES):
        super().__init__()
        self.names = list(names)
        scales = {
            "res2": lambda: nn.Sequential(
                nn.ConvTranspose2d(dim, dim // 2, 2, 2),
                LayerNorm2d(dim // 2, eps=1e-6),
                nn.GELU(),
                nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2),
            ),
            "res3": lambda: nn.ConvTranspose2d(dim, dim // 2, 2, 2),
            "res4": lambda: nn.Identity(),
            "res5": lambda: nn.MaxPool2d(2, 2, ceil_mode=True),
        }
        in_dims = {"res2": dim // 4, "res3": dim // 2, "res4": dim, "res5": dim}
        self.scale = nn.ModuleDict({n: scales[n]() for n in self.names})
        self.out = nn.ModuleDict(
            {
                n: nn.Sequential(
                    nn.Conv2d(in_dims[n], out_channels, 1, bias=False),
                    LayerNorm2d(out_channels, eps=1e-6),
                    nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                    LayerNorm2d(out_channels, eps=1e-6),
                )
                for n in self.names
            }
        )

    def forward(self, feats: dict) -> dict:
        return {n: self.out[n](self.scale[n](feats[n])) for n in self.names}


class VisionTransformer(FreezableBackbone):
    """ViT backbone. forward: images [B, 3, H, W] -> dict (see module docstring).

    Freezing groups: 0 = patch_embed, cls_token, pos_embed; 1..3 = successive quarters of the blocks;
    4 = the last quarter, the final norm and the pyramid.
    """

    def __init__(
        self,
        embed_dim=768,
        depth=12,
        num_heads=12,
        patch_size=16,
        in_chans=3,
        pretrain_img_size=224,
        mlp_ratio=4.0,
        drop_path_rate=0.1,
        out_indices=(-1,),
        feature_pyramid=True,
        pyramid_channels=256,
        out_features=RES_NAMES,
        out_norm=False,
        use_checkpoint=False,
        freeze_at=0,
    ):
        super().__init__()
        self.patch_size = patch_size
        idx = [i + depth if i < 0 else i for i in out_indices]
        if not idx or any(not 0 <= i < depth for i in idx) or len(set(idx)) != len(idx):
            raise ValueError(
                f"MODEL.VIT.OUT_INDICES={list(out_indices)} is invalid: give distinct block indices "
                f"in [-{depth}, {depth - 1}]."
            )
        if feature_pyramid and len(idx) not in (1, 4):
            raise ValueError(
                f"MODEL.VIT.OUT_INDICES={list(out_indices)} must have 1 or 4 entries with the "
                f"feature pyramid (one block for all levels, or one per level res2..res5)."
            )
        self.out_indices = idx
        self.use_checkpoint = use_checkpoint
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        n = pretrain_img_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n * n, embed_dim))
        dpr = linear_drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, dpr[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if out_norm else None
        self.pyramid = None
        if feature_pyramid:
            self._out_features = check_out_features(out_features, RES_NAMES, "MODEL.VIT.OUT_FEATURES")
            self.pyramid = SimpleFeaturePyramid(embed_dim, pyramid_channels, self._out_features)
            self._shapes = {r: ShapeSpec(channels=pyramid_channels, stride=4 * 2**k) for k, r in enumerate(RES_NAMES)}
        else:
            self._out_features = [f"layer{i}" for i in idx]
            self._shapes = {f"layer{i}": ShapeSpec(channels=embed_dim, stride=patch_size) for i in idx}
        self._init_weights()
        self.freeze(freeze_at)

    def _init_weights(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def freeze_groups(self):
        q = len(self.blocks) // 4
        b = list(self.blocks)
        return [
            [self.patch_embed, self.cls_token, self.pos_embed],
            b[:q],
            b[q : 2 * q],
            b[2 * q : 3 * q],
            b[3 * q :] + [self.norm, self.pyramid],
        ]

    @property
    def size_divisibility(self) -> int:
        return 2 * self.patch_size if self.pyramid is not None else self.patch_size

    def forward_blocks(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """images [B, 3, H, W] -> {i: block i output [B, C, ceil(H/16), ceil(W/16)]} for i in out_indices
        (cls token removed; after ``norm`` if OUT_NORM)."""
        p = self.patch_size
        x = pad_to_multiple(x, p)
        x = self.patch_embed(x)
        B, C, h, w = x.shape
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        x = x + resize_pos_embed(self.pos_embed, (h, w))
        outs = {}
        for i, blk in enumerate(self.blocks[: max(self.out_indices) + 1]):
            if self.use_checkpoint and x.requires_grad:
                x = cp.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if i in self.out_indices:
                y = self.norm(x) if self.norm is not None else x
                outs[i] = y[:, 1:].transpose(1, 2).reshape(B, C, h, w)
        return outs

    def forward(self, x):
        H, W = x.shape[-2:]
        feats = self.forward_blocks(x)
        if self.pyramid is None:
            return {f"layer{i}": f for i, f in feats.items()}
        maps = [feats[i] for i in self.out_indices]
        if len(maps) == 1:
            maps = maps * 4
        outs = self.pyramid({r: maps[k] for k, r in enumerate(RES_NAMES) if r in self._out_features})
        # the pyramid sees the map of the 16-padded image: crop to ceil(H / stride) like the other backbones
        return {
            r: y[..., : ceil_div(H, self._shapes[r].stride), : ceil_div(W, self._shapes[r].stride)]
            for r, y in outs.items()
        }


def vit(variant: str, **kwargs) -> VisionTransformer:
    """ViT-T/S/B/L patch 16 from :data:`VIT_VARIANTS`; ``kwargs`` go to :class:`VisionTransformer`."""
    v = check_variant(variant, VIT_VARIANTS, "MODEL.VIT.VARIANT")
    return VisionTransformer(embed_dim=v["embed_dim"], depth=v["depth"], num_heads=v["num_heads"], **kwargs)


@BACKBONE_REGISTRY.register()
def ViTBackbone(cfg, input_shape):
    """ViT from MODEL.VIT.* and MODEL.BACKBONE.FREEZE_AT."""
    c = cfg.MODEL.VIT
    return vit(
        c.VARIANT,
        in_chans=input_shape.channels,
        pretrain_img_size=c.PRETRAIN_IMG_SIZE,
        drop_path_rate=c.DROP_PATH_RATE,
        out_indices=tuple(c.OUT_INDICES),
        feature_pyramid=c.FEATURE_PYRAMID,
        pyramid_channels=c.PYRAMID_CHANNELS,
        out_features=c.OUT_FEATURES,
        out_norm=c.OUT_NORM,
        use_checkpoint=c.USE_CHECKPOINT,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


def checkpoint_filter_vit(state_dict: dict, model: VisionTransformer | None = None) -> dict:
    """timm ViT state dict (or {"model": ...}) -> our names: drops ``head.*``, ``fc_norm.*`` (and ``norm.*`` when
    ``model`` has no final norm). Patch-16 timm models with a cls token only (no register tokens)."""
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    if "reg_token" in state_dict:
        raise ValueError("ViT checkpoints with register tokens are not supported by VisionTransformer.")
    keep_norm = model is None or model.norm is not None
    out = {}
    for k, v in state_dict.items():
        if k.startswith(("head.", "fc_norm.", "head_drop.")) or (k.startswith("norm.") and not keep_norm):
            continue
        out[k] = v
    return out
