"""Swin Transformer (Liu et al., ICCV 2021) as a detectron2 backbone, Mask2Former's ``D2SwinTransformer``.

Parameter names and shapes equal the official Mask2Former Swin checkpoints (``backbone.patch_embed.*``,
``backbone.layers.{i}.blocks.{j}.*``, ``backbone.layers.{i}.downsample.*``, ``backbone.norm{i}.*``), so
those load directly; ImageNet Swin checkpoints go through :func:`convert_swin_checkpoint`.
Any input size works: patch embedding, windows and patch merging pad internally, so ``res{k}`` has
spatial size ``ceil(H / stride)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from torch import nn

from ...layers import DropPath, Mlp, init_transformer_weights, linear_drop_path_rates, pad_to_multiple
from ...ops import Linear
from .common import RES_NAMES, FreezableBackbone, check_out_features, check_variant

# MODEL.SWIN.VARIANT -> (embed_dim, depths, num_heads) of the architecture; window_size and pretrain_img_size are
# those of the official ImageNet checkpoint of the variant (set MODEL.SWIN.WINDOW_SIZE / PRETRAIN_IMG_SIZE to them to
# load it); params (M) and GFLOPs of the ImageNet model as the paper reports them
SWIN_VARIANTS = {
    "T": dict(
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        pretrain_img_size=224,
        paper_params_m=28,
        paper_gflops_224=4.5,
    ),
    "S": dict(
        embed_dim=96,
        depths=(2, 2, 18, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        pretrain_img_size=224,
        paper_params_m=50,
        paper_gflops_224=8.7,
    ),
    "B": dict(
        embed_dim=128,
        depths=(2, 2, 18, 2),
        num_heads=(4, 8, 16, 32),
        window_size=12,
        pretrain_img_size=384,
        paper_params_m=88,
        paper_gflops_224=15.4,
    ),
    "L": dict(
        embed_dim=192,
        depths=(2, 2, 18, 2),
        num_heads=(6, 12, 24, 48),
        window_size=12,
        pretrain_img_size=384,
        paper_params_m=197,
        paper_gflops_224=34.5,
    ),
}


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of ws) -> [B * nW, ws * ws, C]."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, C)


def window_reverse(windows: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    """[B * nW, ws * ws, C] -> [B, H, W, C]."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative position bias.

    forward: x [B*nW, ws*ws, C], mask [nW, ws*ws, ws*ws] (0 / -100) or None -> [B*nW, ws*ws, C].
    """

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.window_size = ws = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # [ws*ws, ws*ws, 2]
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1])
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask=None):
        Bw, N, C = x.shape
        qkv = self.qkv(x).reshape(Bw, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(Bw // nW, nW, self.num_heads, N, N) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(Bw, N, C)
        return self.proj_drop(self.proj(x))


class SwinBlock(nn.Module):
    """(Shifted-)window attention block. forward: x [B, H*W, C], H, W, attn_mask -> [B, H*W, C]."""

    def __init__(
        self,
        dim,
        num_heads,
        window_size=7,
        shift_size=0,
        mlp_ratio=4.0,
        qkv_bias=True,
        qk_scale=None,
        drop=0.0,
        attn_drop=0.0,
        drop_path=0.0,
    ):
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x, H, W, attn_mask):
        B, L, C = x.shape
        ws, s = self.window_size, self.shift_size
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        pad_b, pad_r = (-H) % ws, (-W) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        windows = self.attn(window_partition(x, ws), mask=attn_mask if s > 0 else None)
        x = window_reverse(windows, ws, Hp, Wp)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        x = x[:, :H, :W].reshape(B, H * W, C)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat + LayerNorm + Linear(4C -> 2C). x [B, H*W, C] -> [B, ceil(H/2)*ceil(W/2), 2C]."""

    def __init__(self, dim):
        super().__init__()
        self.reduction = Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x, H, W):
        B, L, C = x.shape
        x = x.view(B, H, W, C)
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class SwinStage(nn.Module):
    """Blocks of one resolution + optional PatchMerging. forward: x [B, H*W, C], H, W ->
    (stage output [B, H*W, C], H, W, next input [B, H'*W', 2C], H', W')."""

    def __init__(
        self,
        dim,
        depth,
        num_heads,
        window_size,
        mlp_ratio,
        qkv_bias,
        qk_scale,
        drop,
        attn_drop,
        drop_paths,
        downsample: bool,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.window_size, self.shift_size = window_size, window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            [
                SwinBlock(
                    dim,
                    num_heads,
                    window_size,
                    0 if i % 2 == 0 else window_size // 2,
                    mlp_ratio,
                    qkv_bias,
                    qk_scale,
                    drop,
                    attn_drop,
                    drop_paths[i],
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def _attn_mask(self, H, W, device):
        """[nW, ws*ws, ws*ws]: -100 between tokens that came from different regions of the shifted map."""
        ws, s = self.window_size, self.shift_size
        Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
        img = torch.zeros(1, Hp, Wp, 1, device=device)
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                img[:, hs, wsl] = cnt
                cnt += 1
        win = window_partition(img, ws).squeeze(-1)
        mask = win[:, None, :] - win[:, :, None]
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def forward(self, x, H, W):
        mask = self._attn_mask(H, W, x.device)
        for blk in self.blocks:
            if self.use_checkpoint and x.requires_grad:
                x = cp.checkpoint(blk, x, H, W, mask, use_reentrant=False)
            else:
                x = blk(x, H, W, mask)
        if self.downsample is None:
            return x, H, W, x, H, W
        return x, H, W, self.downsample(x, H, W), -(-H // 2), -(-W // 2)


class PatchEmbed(nn.Module):
    """Non-overlapping patch conv (input padded to a multiple of the patch) + optional LayerNorm.
    [B, 3, H, W] -> [B, C, ceil(H/p), ceil(W/p)]."""

    def __init__(self, patch_size=4, in_chans=3, embed_dim=96, patch_norm=True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x):
        x = self.proj(pad_to_multiple(x, self.patch_size))
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x


class SwinTransformer(FreezableBackbone):
    """Swin Transformer backbone. forward: images [B, 3, H, W] -> {"res{k}": [B, C*2^(k-2), ceil(H/2^k), ...]}.

    Freezing groups: 0 = patch_embed (+ absolute_pos_embed), k = layers[k-1] (with its patch merging) + norm{k-1}.
    """

    def __init__(
        self,
        pretrain_img_size=224,
        patch_size=4,
        in_chans=3,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        mlp_ratio=4.0,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.2,
        ape=False,
        patch_norm=True,
        out_features=RES_NAMES,
        use_checkpoint=False,
        freeze_at=0,
    ):
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"MODEL.SWIN.DEPTHS={list(depths)} and NUM_HEADS={list(num_heads)} need 4 entries each.")
        self._out_features = check_out_features(out_features, RES_NAMES, "MODEL.SWIN.OUT_FEATURES")
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.absolute_pos_embed = None
        if ape:
            n = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, n, n))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = linear_drop_path_rates(drop_path_rate, depths)
        dims = [embed_dim * 2**i for i in range(4)]
        self.layers = nn.ModuleList(
            [
                SwinStage(
                    dims[i],
                    depths[i],
                    num_heads[i],
                    window_size,
                    mlp_ratio,
                    qkv_bias,
                    qk_scale,
                    drop_rate,
                    attn_drop_rate,
                    dpr[i],
                    downsample=i < 3,
                    use_checkpoint=use_checkpoint,
                )
                for i in range(4)
            ]
        )
        self.out_indices = [RES_NAMES.index(n) for n in self._out_features]
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(dims[i]))
        self._shapes = {n: ShapeSpec(channels=dims[i], stride=4 * 2**i) for i, n in enumerate(RES_NAMES)}
        self.apply(init_transformer_weights)
        self.freeze(freeze_at)

    def freeze_groups(self):
        groups = [[self.patch_embed, self.absolute_pos_embed]]
        for i in range(4):
            groups.append([self.layers[i], getattr(self, f"norm{i}", None)])
        return groups

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"SwinTransformer takes [B, C, H, W] images, got shape {tuple(x.shape)}.")
        x = self.patch_embed(x)
        H, W = x.shape[-2:]
        if self.absolute_pos_embed is not None:
            x = x + F.interpolate(self.absolute_pos_embed, size=(H, W), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outs = {}
        for i, layer in enumerate(self.layers):
            out, h, w, x, H, W = layer(x, H, W)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs[RES_NAMES[i]] = out.view(-1, h, w, out.shape[-1]).permute(0, 3, 1, 2).contiguous()
        return outs


@BACKBONE_REGISTRY.register()
def SwinTransformerBackbone(cfg, input_shape):
    """Swin from MODEL.SWIN.VARIANT (T/S/B/L: embed_dim, depths, num_heads of :data:`SWIN_VARIANTS`), the other
    MODEL.SWIN.* keys (official Mask2Former names) and MODEL.BACKBONE.FREEZE_AT."""
    s = cfg.MODEL.SWIN
    v = check_variant(s.VARIANT, SWIN_VARIANTS, "MODEL.SWIN.VARIANT")
    return SwinTransformer(
        pretrain_img_size=s.PRETRAIN_IMG_SIZE,
        patch_size=s.PATCH_SIZE,
        in_chans=input_shape.channels,
        embed_dim=v["embed_dim"],
        depths=tuple(v["depths"]),
        num_heads=tuple(v["num_heads"]),
        window_size=s.WINDOW_SIZE,
        mlp_ratio=s.MLP_RATIO,
        qkv_bias=s.QKV_BIAS,
        qk_scale=s.QK_SCALE,
        drop_rate=s.DROP_RATE,
        attn_drop_rate=s.ATTN_DROP_RATE,
        drop_path_rate=s.DROP_PATH_RATE,
        ape=s.APE,
        patch_norm=s.PATCH_NORM,
        out_features=s.OUT_FEATURES,
        use_checkpoint=s.USE_CHECKPOINT,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


def convert_swin_checkpoint(state_dict: dict) -> dict:
    """Official Swin ImageNet checkpoint (``torch.load(f)["model"]`` or the dict itself) -> our names.

    The names already match; this drops the classifier (``head.*``), the final ImageNet ``norm.*`` (the
    backbone has per-level ``norm{i}`` instead) and the ``attn_mask`` buffers some releases store.
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    out = {}
    for k, v in state_dict.items():
        if k.startswith(("head.", "norm.")) or k.endswith("attn_mask"):
            continue
        out[k] = v
    return out
