"""Sine position encoding of DETR, used by the pixel decoder and the transformer decoder."""

import functools
import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine / cosine encoding of pixel positions (DETR, normalised variant).

    Args:
        num_pos_feats: features per axis; the output has 2 * num_pos_feats channels (y features, then x).
        temperature: wavelength base.
        normalize: scale the cumulative positions to [0, scale].
        scale: the range of normalised positions (2 * pi).
    """

    def __init__(
        self, num_pos_feats: int = 64, temperature: float = 10000.0, normalize: bool = True, scale: float = 2 * math.pi
    ):
        super().__init__()
        self.num_pos_feats, self.temperature, self.normalize, self.scale = num_pos_feats, temperature, normalize, scale

    @torch.no_grad()
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, H, W] (only its shape, device and dtype are used); mask: optional [B, H, W] bool, True at
        padding. Returns [B, 2 * num_pos_feats, H, W] in x's dtype.

        Without a mask the encoding depends only on (H, W): it is computed once per size, device and dtype and
        returned expanded over the batch (read-only: do not modify it in place). Traced, compiled or exported
        (symbolic sizes) it is computed in the graph instead.
        """
        B, _, H, W = x.shape
        if mask is None and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            return _cached_encoding(
                self.num_pos_feats, self.temperature, self.normalize, self.scale, H, W, x.device, x.dtype
            ).expand(B, -1, -1, -1)
        if mask is None:
            return self._encode_unmasked(x)
        return self._encode(x, mask)

    def _frequencies(self, device) -> torch.Tensor:
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        return self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)

    def _encode_unmasked(self, x: torch.Tensor) -> torch.Tensor:
        """The encoding without padding from 1-D tables: the cumulative positions are then 1..H and 1..W, so each
        row's (column's) features are computed once and expanded (the same arithmetic as :meth:`_encode`, equal
        values; far fewer operations on image-sized tensors, which also keeps an export's graph small)."""
        B, _, H, W = x.shape
        y_embed = torch.arange(1, H + 1, dtype=torch.float32, device=x.device)
        x_embed = torch.arange(1, W + 1, dtype=torch.float32, device=x.device)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[-1] + eps) * self.scale
            x_embed = x_embed / (x_embed[-1] + eps) * self.scale
        dim_t = self._frequencies(x.device)
        pos_y = y_embed[:, None] / dim_t  # [H, F]
        pos_x = x_embed[:, None] / dim_t  # [W, F]
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        F = pos_y.shape[1]
        pos = torch.cat((pos_y[:, None, :].expand(H, W, F), pos_x[None, :, :].expand(H, W, F)), dim=2)  # [H, W, 2F]
        return pos.permute(2, 0, 1).unsqueeze(0).expand(B, -1, -1, -1).to(x.dtype)

    def _encode(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, _, H, W = x.shape
        not_mask = torch.ones(B, H, W, device=x.device, dtype=torch.bool) if mask is None else ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            # the last row / column by select, not a [-1:] slice: an exporter then knows its size is 1
            y_embed = y_embed / (y_embed[:, -1].unsqueeze(1) + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1].unsqueeze(2) + eps) * self.scale
        dim_t = self._frequencies(x.device)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(x.dtype)


@functools.lru_cache(maxsize=32)
@torch.no_grad()
def _cached_encoding(num_pos_feats, temperature, normalize, scale, H, W, device, dtype) -> torch.Tensor:
    """[1, 2 * num_pos_feats, H, W] encoding without padding (the settings are the cache key)."""
    module = PositionEmbeddingSine(num_pos_feats, temperature, normalize, scale)
    return module._encode_unmasked(torch.empty(1, 0, H, W, device=device, dtype=dtype))
