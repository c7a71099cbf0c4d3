"""The MSDeformAttn layer of Deformable DETR (Zhu et al., ICLR 2021), as used by Mask2Former's pixel decoder.

Parameter names (value_proj, sampling_offsets, attention_weights, output_proj) match the official
Deformable-DETR / Mask2Former checkpoints.

The layer calls :func:`ms_deform_attn` (compiled kernels) unless the caller's context chose another op with
:func:`use_ms_deform_attn_op` (export tracing uses the pure-PyTorch reference that way). The choice is held in a
``contextvars.ContextVar``, so it applies to the calling thread (or asyncio task) only, never to the process.
"""

import contextlib
import contextvars
import math
from typing import Callable, Iterator

import torch
from torch import nn

from .linear import Linear, linear
from .ms_deform_attn_function import ms_deform_attn

# the op MSDeformAttn layers call in the current context; None = ms_deform_attn
_OP_OVERRIDE: contextvars.ContextVar[Callable | None] = contextvars.ContextVar(
    "universal_seg_ms_deform_attn_op", default=None
)


@contextlib.contextmanager
def use_ms_deform_attn_op(op: Callable) -> Iterator[None]:
    """Inside this context, MSDeformAttn layers run in the calling thread / task call ``op`` instead of
    :func:`ms_deform_attn` (same signature: value [N, S, M, D], spatial_shapes [L, 2], level_start_index [L],
    sampling_locations [N, Lq, M, L, P, 2], attention_weights [N, Lq, M, L, P] -> [N, Lq, M * D]).
    Other threads are not affected; contexts nest and the previous op is restored on exit."""
    if not callable(op):
        raise TypeError(f"use_ms_deform_attn_op needs a callable op, got {type(op).__name__}.")
    token = _OP_OVERRIDE.set(op)
    try:
        yield
    finally:
        _OP_OVERRIDE.reset(token)


def active_ms_deform_attn_op() -> Callable:
    """The op MSDeformAttn layers call in the current context (:func:`ms_deform_attn` unless overridden)."""
    op = _OP_OVERRIDE.get()
    return ms_deform_attn if op is None else op


def _softmax_last_dim(x: torch.Tensor) -> torch.Tensor:
    """softmax over the last dimension, written out on the CPU: PyTorch's CPU softmax kernel is about 3x slower for
    a last dimension of a dozen elements (the L * P samples of one head) than max / exp / sum / divide."""
    if x.device.type != "cpu":
        return x.softmax(-1)
    e = (x - x.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: each query attends to ``n_points`` learned offsets around its reference
    point in each of ``n_levels`` feature maps, per head.

    Args:
        d_model: channels of queries and values (divisible by n_heads).
        n_levels: number of feature levels.
        n_heads: attention heads.
        n_points: sampling points per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads}).")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = Linear(d_model, d_model)
        self.output_proj = Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR init: offsets start on a per-head direction grid, point i at distance i + 1 (in
        pixels of each level); attention starts uniform; projections xavier-uniform with zero bias."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float64) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [M, 2] as (x, y)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values  # onto the unit square
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float64).view(1, 1, -1, 1)
        grid = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1) * scale
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor,
        input_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: [N, Lq, C].
            reference_points: [N, Lq, L, 2] (x, y) in [0, 1], or [N, Lq, L, 4] boxes (cx, cy, w, h).
            input_flatten: [N, S, C], the levels' features flattened and concatenated.
            input_spatial_shapes: [L, 2] (H_l, W_l), integer, on the CPU (preferred on GPUs: checked on the host
                without a synchronisation) or on the inputs' device.
            input_level_start_index: [L], integer, on the same device as input_spatial_shapes.
            input_padding_mask: optional [N, S] bool, True at padded positions (their values are zeroed).

        Returns:
            [N, Lq, C].
        """
        N, Lq, C = query.shape
        S = input_flatten.shape[1]
        M, L, P = self.n_heads, self.n_levels, self.n_points
        if C != self.d_model or input_flatten.shape[2] != self.d_model:
            raise ValueError(
                f"MSDeformAttn: expected {self.d_model} channels, got query {tuple(query.shape)} "
                f"and input {tuple(input_flatten.shape)}."
            )
        if input_spatial_shapes.shape[0] != L:
            raise ValueError(f"MSDeformAttn: built for {L} levels, got {input_spatial_shapes.shape[0]} spatial shapes.")

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(N, S, M, C // M)
        weights = _softmax_last_dim(self.attention_weights(query).view(N, Lq, M, L * P)).view(N, Lq, M, L, P)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: dividing them by (W_l, H_l) scales each output channel of the
            # projection, so the scale is folded into its weight and bias; the reference points are broadcast over
            # the heads only (broadcasting over the inner point axis too is several times slower on the CPU)
            weight = self.sampling_offsets.weight
            # [L, 2]; from a CPU table the copy to the GPU is asynchronous (no host synchronisation)
            inv_size = (1.0 / input_spatial_shapes.flip(-1).to(weight.dtype)).to(weight.device, non_blocking=True)
            scale = inv_size[None, :, None, :].expand(M, L, P, 2).reshape(-1)
            offsets = linear(query, self.sampling_offsets.weight * scale[:, None], self.sampling_offsets.bias * scale)
            ref = reference_points[:, :, :, None, :].expand(N, Lq, L, P, 2).reshape(N, Lq, 1, L * P * 2)
            locations = (offsets.view(N, Lq, M, L * P * 2) + ref).view(N, Lq, M, L, P, 2)
        elif reference_points.shape[-1] == 4:
            offsets = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                f"MSDeformAttn: reference_points must end in 2 or 4 coordinates, got {tuple(reference_points.shape)}."
            )
        out = active_ms_deform_attn_op()(value, input_spatial_shapes, input_level_start_index, locations, weights)
        return self.output_proj(out)
