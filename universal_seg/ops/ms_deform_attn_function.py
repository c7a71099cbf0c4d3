"""Multi-scale deformable attention as an autograd Function over the compiled kernels, with input validation
and dispatch: compiled CUDA kernels for CUDA tensors, compiled CPU kernels for CPU tensors, and the pure-PyTorch
reference only when the extension (or its CUDA part) is missing.
"""

import torch
from torch.autograd.function import once_differentiable

from ._extension import check_cuda_device, load_extension, warn_no_cuda_kernels
from .ms_deform_attn_reference import ms_deform_attn_reference

_VALUE_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums run in (and sampling locations / weights are kept in) for values of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class MSDeformAttnFunction(torch.autograd.Function):
    """Autograd wrapper of ``universal_seg._C.ms_deform_attn_{forward,backward}``.

    Expects validated, contiguous inputs with locations / weights in ``opmath_dtype(value.dtype)``;
    use :func:`ms_deform_attn`, which prepares them.
    """

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        ext = load_extension()
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return ext.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        ext = load_extension()
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_loc, grad_attn = ext.ms_deform_attn_backward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            grad_output.to(value.dtype).contiguous(),
        )
        return grad_value, None, None, grad_loc, grad_attn


def _validate_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> None:
    """Raises ValueError with one sentence naming the problem; reads shapes, dtypes and devices only (no data)."""
    if value.dim() != 4:
        raise ValueError(f"ms_deform_attn: value must be [N, S, heads, channels], got shape {tuple(value.shape)}.")
    if value.dtype not in _VALUE_DTYPES:
        raise ValueError(f"ms_deform_attn: value must be float64, float32, float16 or bfloat16, got {value.dtype}.")
    N, S, M, _ = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes must be [levels, 2] (H, W), got {tuple(spatial_shapes.shape)}."
        )
    L = spatial_shapes.shape[0]
    if spatial_shapes.is_floating_point() or level_start_index.is_floating_point():
        raise ValueError("ms_deform_attn: spatial_shapes and level_start_index must be integer tensors.")
    if (
        sampling_locations.dim() != 6
        or sampling_locations.shape[-1] != 2
        or tuple(sampling_locations.shape[:4:2]) != (N, M)
        or sampling_locations.shape[3] != L
    ):
        raise ValueError(
            f"ms_deform_attn: sampling_locations must be [N={N}, Lq, heads={M}, levels={L}, points, 2], "
            f"got {tuple(sampling_locations.shape)}."
        )
    if tuple(attention_weights.shape) != tuple(sampling_locations.shape[:5]):
        raise ValueError(
            f"ms_deform_attn: attention_weights must be {tuple(sampling_locations.shape[:5])} "
            f"(sampling_locations without its last dimension), got {tuple(attention_weights.shape)}."
        )
    devices = {t.device for t in (value, sampling_locations, attention_weights)}
    if len(devices) != 1:
        raise ValueError(
            f"ms_deform_attn: value, sampling_locations and attention_weights must be on one device, "
            f"got {sorted(map(str, devices))}."
        )
    for name, table in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if table.device != value.device and table.device.type != "cpu":
            raise ValueError(f"ms_deform_attn: {name} must be on the CPU or on {value.device}, got {table.device}.")
    if tuple(level_start_index.shape) != (L,):
        raise ValueError(f"ms_deform_attn: level_start_index must be [{L}], got {tuple(level_start_index.shape)}.")


def _validate_level_table(spatial_shapes, level_start_index, S: int) -> None:
    """Raises ValueError unless level_start_index holds the running sums of the level areas and they cover S.

    Reads the tables' values: free for CPU tensors, a host synchronisation for CUDA tensors (call it only where
    one happens anyway)."""
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    if any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(f"ms_deform_attn: every spatial shape must be positive, got {shapes}.")
    expected = [sum(h * w for h, w in shapes[:i]) for i in range(len(shapes))]
    if starts != expected:
        raise ValueError(
            f"ms_deform_attn: level_start_index {starts} does not match spatial_shapes {shapes} (expected {expected})."
        )
    total = sum(h * w for h, w in shapes)
    if total != S:
        raise ValueError(f"ms_deform_attn: spatial_shapes {shapes} cover {total} positions but value has S = {S}.")


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention (differentiable in value, locations and weights).

    Args:
        value: [N, S, M, D] float64 / float32 / float16 / bfloat16; S = sum over levels of H_l * W_l.
        spatial_shapes: [L, 2] integer (H_l, W_l), on the CPU or on value's device.
        level_start_index: [L] integer, start of each level in S (0, H_0*W_0, ...), on the CPU or on value's device.
        sampling_locations: [N, Lq, M, L, P, 2] (x, y) normalised to [0, 1], pixel centres at (i + 0.5) / W;
            bilinear sampling with zero padding outside the level.
        attention_weights: [N, Lq, M, L, P], usually softmaxed over (L, P).

    Returns:
        [N, Lq, M * D] in value's dtype. Locations and weights are used in float32 (float64 for float64
        values) whatever their dtype, and all sums run in that precision.

    Validation: shapes, dtypes and devices always, on the host. The level table's values (level_start_index =
    running sums of the areas, covering S) are checked on the host when the tables are CPU tensors; CUDA tables
    are checked by the CUDA kernels on the device (an inconsistent table stops the kernel with a device-side
    assertion before any read), so no call synchronises with the GPU. Pass CPU tables from GPU code to get the
    host-side error messages; they are copied to the GPU asynchronously.
    """
    _validate_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    ext = load_extension()
    compiled = ext is not None and (not value.is_cuda or ext.cuda_version() > 0)
    on_host = spatial_shapes.device.type == "cpu" and level_start_index.device.type == "cpu"
    if on_host or not compiled:  # the reference reads the table on the host anyway
        _validate_level_table(spatial_shapes, level_start_index, value.shape[1])
    if value.is_cuda and compiled:
        check_cuda_device(value.device)
    op = opmath_dtype(value.dtype)
    args = (
        value.contiguous(),
        spatial_shapes.to(device=value.device, dtype=torch.long, non_blocking=True).contiguous(),
        level_start_index.to(device=value.device, dtype=torch.long, non_blocking=True).contiguous(),
        sampling_locations.to(op).contiguous(),
        attention_weights.to(op).contiguous(),
    )
    if not compiled:
        if ext is not None:
            warn_no_cuda_kernels()
        return ms_deform_attn_reference(*args)
    return MSDeformAttnFunction.apply(*args)
