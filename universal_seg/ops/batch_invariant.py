"""Batch-invariant CPU inference: an image's outputs are bit for bit those it gets alone, whatever else is in its batch.

Found by comparing every module's output for a batch with its output for each image alone (Mask2Former R18 and
R50, SegFormer-B0 on the CPU; ``tests/test_batch_invariant.py``). Two PyTorch CPU kernels make an image's result
depend on its batch even for identical inputs and layouts; the other ops of these models compute each image
independently of the others, given the same memory layout (which :func:`universal_seg.layers.tokens_to_map` keeps
the same for every batch size):

- **Convolution.** PyTorch sends a float32 CPU convolution to oneDNN or to its native im2col + GEMM kernel by a size
  heuristic (``use_mkldnn`` in ``aten/src/ATen/native/Convolution.cpp``) in which the batch size enters: a batch of
  two or more always goes to oneDNN, while one image goes to the native kernel when its input holds at most 20480
  values and the kernel is at most 3x3 (and, with one thread, for any unstrided 1x1 kernel below a batch of 16).
  The two libraries sum in different orders: up to 1e-4 on a 512-channel 3x3 convolution of a 5x7 map. oneDNN
  itself gives each image the same result in any batch.
- **Channels-last GroupNorm.** For maps of 1024 pixels or more PyTorch's kernel splits the N * H * W rows evenly
  over the threads and each thread sums its share; where the split points fall in an image, hence the order in
  which its statistics are summed, depends on N (differences of a few 1e-6).

:func:`batch_invariant` returns a ``TorchFunctionMode`` that runs exactly those calls image by image, so that each
image takes the path and the summation order it takes alone. Everything else runs batched as before: the mode only
adds a Python dispatch per op (measured in ``benchmarks/batch_invariance.py``). The meta-architectures enter it for
CPU inference on batches of two or more (``SegmentorBase.forward``). GPU kernels are not covered (cuDNN and cuBLAS
also choose algorithms by shape). ``universal_seg.ops.linear`` is batch-invariant by itself (no size threshold).
"""

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

__all__ = ["BatchInvariantMode", "batch_invariant", "pytorch_conv_uses_onednn"]

NATIVE_CONV_MAX_NUMEL = 20480  # PyTorch's threshold (use_mkldnn): one image at most this big -> native kernel


def pytorch_conv_uses_onednn(input_shape, weight_shape, stride, dilation, groups: int) -> bool:
    """Whether PyTorch runs a float32 CPU ``conv2d`` of an input of ``input_shape`` [N, C, H, W] through oneDNN
    (its ``use_mkldnn`` rule for non-transposed convolutions, written out)."""
    n = input_shape[0]
    one_by_one = weight_shape[-1] == 1 and weight_shape[-2] == 1
    strided, dilated = any(s != 1 for s in _pair(stride)), any(d != 1 for d in _pair(dilation))
    multithreaded_ok = strided or dilated or n >= 16 or not one_by_one or torch.get_num_threads() > 1
    big_enough = (
        groups > 1
        or (weight_shape[-1] > 3 and weight_shape[-2] > 3)
        or n > 1
        or math.prod(input_shape) > NATIVE_CONV_MAX_NUMEL
    )
    return multithreaded_ok and big_enough


def _arg(args, kwargs, index: int, name: str, default):
    return args[index] if len(args) > index else kwargs.get(name, default)


def _conv_needs_split(args, kwargs) -> bool:
    x, weight = args[0], _arg(args, kwargs, 1, "weight", None)
    if not (
        torch.is_tensor(x)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and x.shape[0] > 1
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    ):
        return False
    stride, dilation = _arg(args, kwargs, 3, "stride", 1), _arg(args, kwargs, 5, "dilation", 1)
    groups = _arg(args, kwargs, 6, "groups", 1)
    alone = (1, *x.shape[1:])
    batched = pytorch_conv_uses_onednn(x.shape, weight.shape, stride, dilation, groups)
    return batched != pytorch_conv_uses_onednn(alone, weight.shape, stride, dilation, groups)


def _group_norm_needs_split(args) -> bool:
    x = args[0]
    return (
        torch.is_tensor(x)
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.shape[0] > 1
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def _per_image(func, args, kwargs):
    """func on each image of args[0] alone, concatenated: [N, ...] (the inputs' memory format is kept)."""
    x = args[0]
    outs = [func(x[i : i + 1], *args[1:], **kwargs) for i in range(x.shape[0])]
    out = torch.cat(outs)
    if outs[0].is_contiguous(memory_format=torch.channels_last) and not outs[0].is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class BatchInvariantMode(TorchFunctionMode):
    """Runs the batch-dependent CPU calls (see the module docstring) image by image; every other call unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d and _conv_needs_split(args, kwargs):
            return _per_image(func, args, kwargs)
        if func is F.group_norm and _group_norm_needs_split(args):
            return _per_image(func, args, kwargs)
        return func(*args, **kwargs)


def batch_invariant(images: torch.Tensor):
    """The context for running a model on ``images`` [B, 3, H, W]: :class:`BatchInvariantMode` for a CPU batch of two
    or more in eager mode, else a no-op (one image, GPU, tracing, scripting, compiling, ONNX export)."""
    if (
        images.device.type != "cpu"
        or images.shape[0] < 2
        or torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    ):
        return nullcontext()
    return BatchInvariantMode()
