"""Padding to a multiple of a stride (bottom / right, as detectron2's ImageList does)."""

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    """Pad ``x [..., H, W]`` at the bottom / right with ``value`` so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=value)
    return x


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for integers (the size of a stride-b map of an a-pixel side)."""
    return -(-a // b)
