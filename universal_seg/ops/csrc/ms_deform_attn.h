// Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021): kernel entry points.
//
// Shapes (N batch, S = sum_l H_l*W_l flattened value positions, M heads, D channels per head,
// Lq queries, L levels, P points per level and head):
//   value              [N, S, M, D]          float64 / float32 / float16 / bfloat16
//   spatial_shapes     [L, 2]  int64         (H_l, W_l) of each level
//   level_start_index  [L]     int64         offset of level l in S
//   sampling_loc       [N, Lq, M, L, P, 2]   (x, y) normalised to [0, 1]; opmath dtype of value
//   attn_weight        [N, Lq, M, L, P]      opmath dtype of value
//   output             [N, Lq, M * D]        dtype of value
// "opmath" is float64 for float64 values and float32 for every other dtype: locations and weights keep
// full precision under AMP, and every sum is accumulated in that type.
//
// Sampling is bilinear with zero padding and align_corners=False: the pixel centres of a level of width W
// are at x = (i + 0.5) / W, i.e. torch.nn.functional.grid_sample(2 * loc - 1, align_corners=False).
#pragma once
#include <ATen/ATen.h>  // not torch/extension.h: nvcc parses this header, keep it light

#include <vector>

namespace universal_seg {

// Shape / dtype / device / contiguity checks shared by the CPU and CUDA paths. Raises c10::Error
// (a Python RuntimeError) with a message naming the offending argument; never reads tensor data.
void check_ms_deform_attn_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                 const at::Tensor& attn_weight);

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                      const at::Tensor& attn_weight);

// Returns {grad_value, grad_sampling_loc, grad_attn_weight}, each shaped and typed like its input.
std::vector<at::Tensor> ms_deform_attn_backward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                    const at::Tensor& level_start_index,
                                                    const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                    const at::Tensor& grad_output);

#ifdef UNIVERSAL_SEG_WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                       const at::Tensor& attn_weight);

std::vector<at::Tensor> ms_deform_attn_backward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                     const at::Tensor& grad_output);

// CUDA_VERSION the CUDA kernels were compiled with (e.g. 13000).
int ms_deform_attn_cuda_version();
#endif

}  // namespace universal_seg
