// Input validation shared by the CPU and CUDA kernels (see ms_deform_attn.h for the shapes).
#include "ms_deform_attn.h"

#include <ATen/OpMathType.h>

namespace universal_seg {

void check_ms_deform_attn_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                 const at::Tensor& attn_weight) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be [N, S, heads, channels], got ", value.sizes());
  TORCH_CHECK(sampling_loc.dim() == 6 && sampling_loc.size(5) == 2,
              "ms_deform_attn: sampling_locations must be [N, Lq, heads, levels, points, 2], got ",
              sampling_loc.sizes());
  TORCH_CHECK(attn_weight.dim() == 5, "ms_deform_attn: attention_weights must be [N, Lq, heads, levels, points], got ",
              attn_weight.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must be [levels, 2] (H, W), got ", spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.dim() == 1, "ms_deform_attn: level_start_index must be [levels], got ",
              level_start_index.sizes());
  const int64_t N = value.size(0), M = value.size(2), L = spatial_shapes.size(0);
  TORCH_CHECK(level_start_index.size(0) == L, "ms_deform_attn: level_start_index has ", level_start_index.size(0),
              " entries but spatial_shapes has ", L, " levels");
  TORCH_CHECK(sampling_loc.size(0) == N && sampling_loc.size(2) == M && sampling_loc.size(3) == L,
              "ms_deform_attn: sampling_locations ", sampling_loc.sizes(), " does not match value ", value.sizes(),
              " and ", L, " levels");
  TORCH_CHECK(attn_weight.sizes() == sampling_loc.sizes().slice(0, 5),
              "ms_deform_attn: attention_weights ", attn_weight.sizes(), " must equal sampling_locations ",
              sampling_loc.sizes(), " without the last dimension");
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64");
  const auto st = value.scalar_type();
  TORCH_CHECK(st == at::kDouble || st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "ms_deform_attn: value must be float64, float32, float16 or bfloat16, got ", st);
  const auto op = at::toOpMathType(st);
  TORCH_CHECK(sampling_loc.scalar_type() == op && attn_weight.scalar_type() == op,
              "ms_deform_attn: sampling_locations and attention_weights must be ", op, " for ", st,
              " values, got ", sampling_loc.scalar_type(), " and ", attn_weight.scalar_type());
  for (const at::Tensor* t : {&value, &spatial_shapes, &level_start_index, &sampling_loc, &attn_weight}) {
    TORCH_CHECK(t->is_contiguous(), "ms_deform_attn: every input must be contiguous (call .contiguous())");
    TORCH_CHECK(t->device() == value.device(), "ms_deform_attn: every input must be on ", value.device(),
                ", found one on ", t->device());
  }
}

}  // namespace universal_seg
