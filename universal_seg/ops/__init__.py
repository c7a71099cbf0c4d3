"""Operators: multi-scale deformable attention (compiled CPU and CUDA kernels, pure-PyTorch reference) and a linear
layer whose fp32 CPU products run through oneDNN."""

from ._extension import cuda_kernels_compiled, load_extension
from .linear import Linear, linear, matmul
from .ms_deform_attn_function import MSDeformAttnFunction, ms_deform_attn
from .ms_deform_attn_layer import MSDeformAttn, active_ms_deform_attn_op, use_ms_deform_attn_op
from .ms_deform_attn_reference import ms_deform_attn_reference

__all__ = [
    "Linear",
    "MSDeformAttn",
    "MSDeformAttnFunction",
    "active_ms_deform_attn_op",
    "cuda_kernels_compiled",
    "linear",
    "matmul",
    "load_extension",
    "ms_deform_attn",
    "ms_deform_attn_reference",
    "use_ms_deform_attn_op",
]
