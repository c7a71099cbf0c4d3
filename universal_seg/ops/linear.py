"""A drop-in ``nn.Linear`` whose fp32 CPU products run through oneDNN instead of the BLAS ``addmm``.

On the CPU, PyTorch sends fp32 ``F.linear`` to MKL's sgemm, while convolutions go to oneDNN. On AMD EPYC
machines MKL runs its AVX2 code and oneDNN its AVX-512 code; ``python benchmarks/linear.py`` measures both side by
side (the README gives the numbers). A linear layer over M rows is exactly a 1x1
convolution over a [1, K, M, 1] image, and a row-major [M, K] matrix already *is* that image in channels-last
layout, so the convolution needs no copy in or out. The results are fp32 products with a different summation
order (differences of a few ulp, as between any two BLAS libraries).

The oneDNN path is taken for every plain fp32 CPU product (a matrix or a batch of them, any number of rows) outside
autocast, tracing, scripting and export (those keep a standard ``linear`` op in their graphs); everything else calls
``F.linear``. Autograd works through both paths.

Batch invariance: the path and oneDNN's kernel do not depend on the number of rows, so a row's result does not
depend on the other rows of the call (another image of the batch, say). Hence no minimum row count (with one, the
decoder's [B, Q, C] products took MKL for one image and oneDNN for a batch), and the convolution is called as
``aten.mkldnn_convolution`` rather than ``F.conv2d``, whose backend heuristic sends a [1, K, M, 1] image with at
most 20480 values to PyTorch's native kernel (see :mod:`universal_seg.ops.batch_invariant`).
"""

import torch
import torch.nn.functional as F
from torch import nn


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    ):
        return False
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() >= 2
        and x.numel() > 0
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x [..., K], weight [N, K], bias [N] -> [..., N]."""
    if not _onednn_applies(x, weight):
        return F.linear(x, weight, bias)
    k, n = x.shape[-1], weight.shape[0]
    rows = x.reshape(-1, k)
    if rows.stride() != (k, 1):
        rows = rows.contiguous()
    image = rows.view(1, rows.shape[0], 1, k).permute(0, 3, 1, 2)  # [1, K, M, 1], channels-last strides
    # [1, N, M, 1], channels-last: memory is [M, N]; oneDNN whatever M (F.conv2d would pick by size)
    out = torch.ops.aten.mkldnn_convolution(image, weight.view(n, k, 1, 1), bias, (0, 0), (1, 1), (1, 1), 1)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], n)


def matmul_uses_onednn(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether :func:`matmul` (a [M, K] @ b [K, N]) runs through oneDNN: where :func:`linear` would (fp32 on the CPU,
    any size, outside autocast, tracing and export)."""
    return _onednn_applies(b.t(), a)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``: a [M, K], b [K, N] -> [M, N], through oneDNN where :func:`matmul_uses_onednn`, else torch.mm.

    There b is read as a [1, K, 1, N] NCHW image (a view when b is contiguous) and a as the weights of a 1x1
    convolution [M, K, 1, 1], whose NCHW output [1, M, 1, N] is the row-major product.
    """
    if not matmul_uses_onednn(a, b):
        return torch.mm(a, b)
    m, k = a.shape
    image, weight = b.contiguous().view(1, k, 1, -1), a.contiguous().view(m, k, 1, 1)
    # aten.mkldnn_convolution, not F.conv2d: oneDNN whatever the size (F.conv2d sends small images elsewhere)
    return torch.ops.aten.mkldnn_convolution(image, weight, None, (0, 0), (1, 1), (1, 1), 1).view(m, -1)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, init and state-dict names) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
