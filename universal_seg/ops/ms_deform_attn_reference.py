"""Pure-PyTorch multi-scale deformable attention: the oracle of the tests and the last-resort fallback.

It is the textbook formulation (one ``grid_sample`` per level, then a weighted sum over levels and points),
slow and memory hungry ([N*M, D, Lq, L*P] intermediate) but obviously correct and differentiable by autograd.
"""

import torch
import torch.nn.functional as F


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention by ``grid_sample``.

    Args:
        value: [N, S, M, D], S = sum of H_l * W_l over levels.
        spatial_shapes: [L, 2] integer (H_l, W_l).
        level_start_index: [L]; unused (levels are split by their sizes), kept for the op's signature.
        sampling_locations: [N, Lq, M, L, P, 2] (x, y) in [0, 1]; bilinear, zero padding, align_corners=False.
        attention_weights: [N, Lq, M, L, P].

    Returns:
        [N, Lq, M * D] in value's dtype; the sums run in float32 for float16 / bfloat16 values.
    """
    del level_start_index
    out_dtype = value.dtype
    compute_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
    value = value.to(compute_dtype)
    sampling_locations = sampling_locations.to(compute_dtype)
    attention_weights = attention_weights.to(compute_dtype)

    N, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] convention
    sampled = []
    for level, (h, w) in enumerate(shapes):
        # [N, H*W, M, D] -> [N*M, D, H, W]
        v = values[level].permute(0, 2, 3, 1).reshape(N * M, D, h, w)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [N*M, D, Lq, L, P] weighted by [N*M, 1, Lq, L, P], summed over (L, P)
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L, P)
    out = (torch.stack(sampled, dim=3) * weights).sum(dim=(3, 4))
    return out.view(N, M * D, Lq).transpose(1, 2).contiguous().to(out_dtype)
