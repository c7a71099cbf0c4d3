"""Per-pixel training loss and inference helpers: cross-entropy on upsampled logits, sliding-window logits, class
probabilities."""

from typing import Callable

import torch
import torch.nn.functional as F


def per_pixel_ce_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_label: int) -> torch.Tensor:
    """Mean cross-entropy over the non-ignored pixels.

    logits [B, K, h, w] are bilinearly upsampled (align_corners=False) to the targets' size; targets [B, H, W] long.
    A batch without any labelled pixel gives a zero loss that still reaches every logit (so backward works).
    """
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    if not (targets != ignore_label).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets, ignore_index=ignore_label)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes of per-pixel logits [K, H, W] -> a new [K, H, W] tensor (``logits`` is not modified).

    Channels-last memory (the CPU layout, where the K scores of a pixel are contiguous) is normalised along that
    contiguous axis: PyTorch's ``softmax(dim=0)`` would first copy the whole map to the standard layout (about 6x
    slower for 150 classes at 512x512). The result keeps the input's strides.
    """
    per_pixel = logits.permute(1, 2, 0)  # [H, W, K]
    if not per_pixel.is_contiguous():
        return logits.softmax(dim=0)
    return per_pixel.softmax(dim=-1).permute(2, 0, 1)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window starts along one axis, as mmseg's slide mode: ``max(size - crop + stride - 1, 0) // stride + 1``
    windows at multiples of ``stride``, the last ones shifted back to end at ``size`` (windows clipped to size)."""
    n = max(size - crop + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride + crop, size) - crop, 0) for i in range(n)})


def slide_window_logits(
    image: torch.Tensor,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    crop_size: tuple[int, int],
    stride: tuple[int, int],
) -> torch.Tensor:
    """Logits of one image averaged over overlapping windows.

    image [C, H, W]; ``logits_fn`` maps a batch of windows [N, C, h, w] to logits [N, K, h, w] at the windows'
    size. Windows of ``crop_size`` (clipped to the image) start every ``stride`` pixels; each pixel's logits are
    the mean over the windows covering it. Returns [K, H, W].
    """
    H, W = image.shape[-2:]
    boxes = [
        (y, x, min(y + crop_size[0], H), min(x + crop_size[1], W))
        for y in window_starts(H, crop_size[0], stride[0])
        for x in window_starts(W, crop_size[1], stride[1])
    ]
    crops = torch.stack([image[:, y1:y2, x1:x2] for y1, x1, y2, x2 in boxes])  # all windows have the same size
    window_logits = logits_fn(crops)
    total = window_logits.new_zeros((window_logits.shape[1], H, W))
    count = window_logits.new_zeros((1, H, W))
    for (y1, x1, y2, x2), logits in zip(boxes, window_logits):
        total[:, y1:y2, x1:x2] += logits
        count[:, y1:y2, x1:x2] += 1
    return total / count
