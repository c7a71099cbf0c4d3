// CPU kernels of multi-scale deformable attention (forward and backward), parallelised with at::parallel_for
// (OpenMP). Shapes and sampling convention: see ../ms_deform_attn.h.
//
// Layout choices: the kernels work on a head-major copy of value, [N, M, S, D] (and accumulate grad_value in
// that layout), so one head's feature map is a dense S x D block: bilinear corners of nearby points share cache
// lines and pages instead of being M * D elements apart. The D channels of one position stay contiguous, so
// the innermost loops are unit-stride axpy / dot products over D that the compiler vectorises.
// Forward parallelises over (n, query); backward over (n, head, level), because the grad_value slices of
// different (n, head, level) are disjoint, so scatter-adds need no atomics and results are deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../bilinear.h"
#include "../ms_deform_attn.h"

namespace universal_seg {
namespace {

struct Dims {
  int64_t N, S, M, D, Lq, L, P;
};

Dims dims_of(const at::Tensor& value, const at::Tensor& sampling_loc) {
  return {value.size(0), value.size(1), value.size(2), value.size(3),
          sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4)};
}

// The CPU kernel reads spatial_shapes / level_start_index directly, so it can afford to check that they
// describe value's S axis exactly (the CUDA path has these checks done once on the host in Python).
void check_levels_cpu(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t S) {
  const int64_t* shapes = spatial_shapes.data_ptr<int64_t>();
  const int64_t* starts = level_start_index.data_ptr<int64_t>();
  int64_t expected_start = 0;
  for (int64_t l = 0; l < spatial_shapes.size(0); ++l) {
    TORCH_CHECK(shapes[2 * l] > 0 && shapes[2 * l + 1] > 0, "ms_deform_attn: level ", l,
                " has a non-positive spatial shape (", shapes[2 * l], ", ", shapes[2 * l + 1], ")");
    TORCH_CHECK(starts[l] == expected_start, "ms_deform_attn: level_start_index[", l, "] is ", starts[l],
                " but the spatial shapes before it cover ", expected_start, " positions");
    expected_start += shapes[2 * l] * shapes[2 * l + 1];
  }
  TORCH_CHECK(expected_start == S, "ms_deform_attn: spatial_shapes cover ", expected_start,
              " positions but value has S = ", S);
}

template <typename scalar_t>
void forward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                    const at::opmath_type<scalar_t>* loc, const at::opmath_type<scalar_t>* attn, scalar_t* out,
                    const Dims& d) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, d.N * d.Lq, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(d.D);
    for (int64_t nq = begin; nq < end; ++nq) {
      const int64_t n = nq / d.Lq;
      for (int64_t m = 0; m < d.M; ++m) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        const scalar_t* value_nm = value + (n * d.M + m) * d.S * d.D;  // head-major [N, M, S, D]
        const int64_t sample0 = (nq * d.M + m) * d.L * d.P;  // index of this (n, q, m)'s first sample
        for (int64_t l = 0; l < d.L; ++l) {
          for (int64_t p = 0; p < d.P; ++p) {
            const int64_t s = sample0 + l * d.P + p;
            BilinearCorners<acc_t> c;
            if (!bilinear_corners(loc[2 * s], loc[2 * s + 1], shapes[2 * l], shapes[2 * l + 1], starts[l], c)) {
              continue;
            }
            for (int k = 0; k < 4; ++k) {
              if (c.offset[k] < 0) continue;
              const scalar_t* v = value_nm + c.offset[k] * d.D;
              const acc_t w = attn[s] * c.weight[k];
              acc_t* a = acc.data();
#pragma omp simd
              for (int64_t ch = 0; ch < d.D; ++ch) a[ch] += w * static_cast<acc_t>(v[ch]);
            }
          }
        }
        scalar_t* o = out + (nq * d.M + m) * d.D;
        for (int64_t ch = 0; ch < d.D; ++ch) o[ch] = static_cast<scalar_t>(acc[ch]);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                     const at::opmath_type<scalar_t>* loc, const at::opmath_type<scalar_t>* attn,
                     const scalar_t* grad_out, at::opmath_type<scalar_t>* grad_value,
                     at::opmath_type<scalar_t>* grad_loc, at::opmath_type<scalar_t>* grad_attn, const Dims& d) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, d.N * d.M * d.L, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g(d.D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t l = task % d.L, m = (task / d.L) % d.M, n = task / (d.L * d.M);
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      const scalar_t* value_nm = value + (n * d.M + m) * d.S * d.D;  // head-major [N, M, S, D]
      acc_t* grad_value_nm = grad_value + (n * d.M + m) * d.S * d.D;
      for (int64_t q = 0; q < d.Lq; ++q) {
        const int64_t nqm = (n * d.Lq + q) * d.M + m;
        const scalar_t* go = grad_out + nqm * d.D;
        for (int64_t ch = 0; ch < d.D; ++ch) g[ch] = static_cast<acc_t>(go[ch]);
        const acc_t* gp = g.data();
        for (int64_t p = 0; p < d.P; ++p) {
          const int64_t s = (nqm * d.L + l) * d.P + p;
          BilinearCorners<acc_t> c;
          if (!bilinear_corners(loc[2 * s], loc[2 * s + 1], H, W, starts[l], c)) continue;
          const acc_t a = attn[s];
          acc_t d_attn = 0, d_h = 0, d_w = 0;
          for (int k = 0; k < 4; ++k) {
            if (c.offset[k] < 0) continue;
            const scalar_t* v = value_nm + c.offset[k] * d.D;
            acc_t* gv = grad_value_nm + c.offset[k] * d.D;
            const acc_t coef = a * c.weight[k];
            acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t ch = 0; ch < d.D; ++ch) {
              dot += gp[ch] * static_cast<acc_t>(v[ch]);
              gv[ch] += coef * gp[ch];
            }
            d_attn += c.weight[k] * dot;
            d_h += c.dh[k] * dot;
            d_w += c.dw[k] * dot;
          }
          grad_attn[s] = d_attn;
          grad_loc[2 * s] = a * static_cast<acc_t>(W) * d_w;
          grad_loc[2 * s + 1] = a * static_cast<acc_t>(H) * d_h;
        }
      }
    }
  });
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                      const at::Tensor& attn_weight) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn_forward_cpu: tensors must be on the CPU");
  const Dims d = dims_of(value, sampling_loc);
  check_levels_cpu(spatial_shapes, level_start_index, d.S);
  auto out = at::empty({d.N, d.Lq, d.M * d.D}, value.options());
  const auto value_hm = value.permute({0, 2, 1, 3}).contiguous();  // [N, M, S, D]
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t>(value_hm.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
                             level_start_index.data_ptr<int64_t>(), sampling_loc.data_ptr<acc_t>(),
                             attn_weight.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), d);
  });
  return out;
}

std::vector<at::Tensor> ms_deform_attn_backward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                    const at::Tensor& level_start_index,
                                                    const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                    const at::Tensor& grad_output) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn_backward_cpu: tensors must be on the CPU");
  const Dims d = dims_of(value, sampling_loc);
  check_levels_cpu(spatial_shapes, level_start_index, d.S);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({d.N, d.Lq, d.M * d.D}) &&
                  grad_output.scalar_type() == value.scalar_type() && grad_output.is_contiguous() &&
                  grad_output.device() == value.device(),
              "ms_deform_attn: grad_output must be a contiguous ", value.scalar_type(), " tensor of shape [",
              d.N, ", ", d.Lq, ", ", d.M * d.D, "], got ", grad_output.sizes());
  const auto acc_type = sampling_loc.scalar_type();
  // grad_value is accumulated in the opmath type (fp32 for half types) and cast at the end.
  const auto value_hm = value.permute({0, 2, 1, 3}).contiguous();  // [N, M, S, D]
  auto grad_value_hm = at::zeros({d.N, d.M, d.S, d.D}, value.options().dtype(acc_type));
  auto grad_loc = at::zeros_like(sampling_loc);
  auto grad_attn = at::zeros_like(attn_weight);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t>(value_hm.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
                              level_start_index.data_ptr<int64_t>(), sampling_loc.data_ptr<acc_t>(),
                              attn_weight.data_ptr<acc_t>(), grad_output.data_ptr<scalar_t>(),
                              grad_value_hm.data_ptr<acc_t>(), grad_loc.data_ptr<acc_t>(),
                              grad_attn.data_ptr<acc_t>(), d);
  });
  auto grad_value = grad_value_hm.permute({0, 2, 1, 3}).to(value.scalar_type()).contiguous();  // [N, S, M, D]
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace universal_seg
