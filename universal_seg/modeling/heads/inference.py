"""Per-pixel training loss and inference helpers: cross-entropy on upsampled logits, sliding-window logits, class
probabilities."""

from typing import Callable

import torch
import torch.nn.functional as F


def check_class_weights(weights, num_classes: int, key: str) -> torch.Tensor:
    """float32 [num_classes] of the per-class weights ``weights`` (empty: all 1); raises ValueError naming ``key``
    for a wrong length or a negative or non-finite weight."""
    if len(weights) == 0:
        return torch.ones(num_classes)
    w = torch.tensor([float(v) for v in weights], dtype=torch.float32)
    if len(w) != num_classes or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(
            f"{key} has {len(w)} values {list(weights)[:8]}; give one finite weight >= 0 per class "
            f"({num_classes}, not all 0), or leave it empty for equal weights."
        )
    return w


def per_pixel_ce_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_label: int,
    class_weights: torch.Tensor | None = None,
    focal_gamma: float = 0.0,
) -> torch.Tensor:
    """Weighted mean (focal) cross-entropy over the non-ignored pixels i with target class y_i:

        loss = sum_i w[y_i] (1 - p_i)^gamma (-log p_i) / sum_i w[y_i],   p_i = softmax(logits_i)[y_i]

    w = ``class_weights`` [K] (None: all 1; with gamma 0 this is ``F.cross_entropy(weight=w)``), gamma =
    ``focal_gamma`` (0: cross-entropy; Lin et al.'s focal loss otherwise). logits [B, K, h, w] are bilinearly
    upsampled (align_corners=False) to the targets' size; targets [B, H, W] long. A batch without any labelled
    pixel (or whose labelled pixels all have weight 0) gives a zero loss that still reaches every logit.
    """
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    valid = targets != ignore_label
    if not valid.any():
        return logits.sum() * 0.0
    weight = None if class_weights is None else class_weights.to(device=logits.device, dtype=logits.dtype)
    if focal_gamma == 0:
        if weight is not None and weight[targets[valid]].sum() <= 0:
            return logits.sum() * 0.0
        return F.cross_entropy(logits, targets, weight=weight, ignore_index=ignore_label)
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    log_p = F.log_softmax(logits, dim=1).gather(1, safe[:, None])[:, 0]  # [B, H, W]
    w = valid.to(logits.dtype) if weight is None else weight[safe] * valid
    if w.sum() <= 0:
        return logits.sum() * 0.0
    focal = (1 - log_p.exp()).clamp(min=0) ** focal_gamma * -log_p
    return (w * focal).sum() / w.sum()


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
