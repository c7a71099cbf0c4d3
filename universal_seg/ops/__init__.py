"""Compiled operators: multi-scale deformable attention (CPU and CUDA kernels, pure-PyTorch reference)."""
from ._extension import cuda_kernels_compiled, load_extension
from .ms_deform_attn_layer import MSDeformAttn
from .ms_deform_attn_function import MSDeformAttnFunction, ms_deform_attn
from .ms_deform_attn_reference import ms_deform_attn_reference

__all__ = [
    "MSDeformAttn",
    "MSDeformAttnFunction",
    "cuda_kernels_compiled",
    "load_extension",
    "ms_deform_attn",
    "ms_deform_attn_reference",
]
