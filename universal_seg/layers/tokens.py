"""Token sequences <-> feature maps."""

import torch


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Tokens [B, h*w, C] -> map [B, C, h, w], channels-last contiguous (a view of contiguous tokens, else a copy).

    The same layout for every batch size, so that an image takes the same kernels alone and in a batch. Not
    ``x.transpose(1, 2).reshape(B, C, h, w)``: for B = 1 that view gets the batch stride C (any stride is valid for a
    size-1 dimension), which PyTorch's layout detection reads as NCHW; and a level split off a batch of token
    sequences is channels-last but not contiguous for B > 1 (its batch stride spans all levels), while for B = 1 it
    is: bilinear resizing then ran another kernel (other roundings) in the batch than alone.
    """
    return x.reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
