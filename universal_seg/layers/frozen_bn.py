"""Convolutions followed by a frozen batch norm, computed as one convolution.

A frozen BN is a fixed per-channel affine map, y = s * x + t with s = gamma / sqrt(var + eps) and
t = beta - mean * s, so conv(x; W, b) followed by it equals conv(x; s W, s b + t) exactly (up to rounding), in
training too: gradients reach W through the product. :class:`FoldedFrozenBNConv2d` computes that one
convolution and keeps the BN as its ``norm`` child, so parameter and buffer names (and checkpoints) stay those of
detectron2's ``Conv2d(norm=FrozenBatchNorm2d)``. :func:`fold_frozen_batchnorm` rebuilds a model's such convs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn


class FoldedFrozenBNConv2d(Conv2d):
    """detectron2 ``Conv2d`` whose ``norm`` is a ``FrozenBatchNorm2d``, run as one convolution with the folded
    weight [C_out, C_in / groups, k, k] and bias [C_out]: [B, C_in, H, W] -> [B, C_out, H', W'] (then
    ``activation``).

    Without autograd the folded weight is cached and recomputed only when the conv weight or any BN tensor changes
    (tracked by their version counters, device and dtype): it costs one extra copy of the conv weight.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.norm, FrozenBatchNorm2d):
            raise TypeError(f"FoldedFrozenBNConv2d needs a FrozenBatchNorm2d norm, got {type(self.norm).__name__}.")
        self._cache: tuple | None = None

    @classmethod
    def from_conv(cls, conv: Conv2d) -> FoldedFrozenBNConv2d:
        """The same convolution, sharing ``conv``'s parameters and its norm module."""
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            norm=conv.norm,
            activation=conv.activation,
            device="meta",
        )
        new.weight, new.bias = conv.weight, conv.bias
        new.train(conv.training)
        return new

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(s W, s b + t): the weight and bias of the single convolution."""
        bn = self.norm
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        shift = bn.bias - bn.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias * scale
        return self.weight * scale.view(-1, 1, 1, 1), shift

    def _cached_folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.norm
        tensors = [self.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var]
        if self.bias is not None:
            tensors.append(self.bias)
        key = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, *(t.detach() for t in self.folded()))
        return self._cache[1], self._cache[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting():
            weight, bias = self.folded()
        else:
            weight, bias = self._cached_folded()
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replaces, in place, every detectron2 ``Conv2d`` of ``module`` whose norm is a ``FrozenBatchNorm2d`` by a
    :class:`FoldedFrozenBNConv2d` sharing its parameters and buffers (state-dict keys unchanged). Returns
    ``module``."""
    for name, child in list(module.named_children()):
        if type(child) is Conv2d and isinstance(child.norm, FrozenBatchNorm2d):
            setattr(module, name, FoldedFrozenBNConv2d.from_conv(child))
        else:
            fold_frozen_batchnorm(child)
    return module
