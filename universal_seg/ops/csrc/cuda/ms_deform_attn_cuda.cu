// CUDA kernels of multi-scale deformable attention (forward and backward). Shapes and sampling
// convention: see ../ms_deform_attn.h.
//
// One warp handles one (n, query, head); its lanes walk the head's D channels (coalesced loads of value
// and grad_output, any D). Sums run in the opmath type (fp32 for fp16 / bf16 / fp32, fp64 for fp64).
// Backward: each lane scatters into grad_value with atomicAdd on an opmath buffer (cast to value's dtype at
// the end, so fp16 / bf16 gradients do not lose mass in half-precision atomics); the location and weight
// gradients are per-lane partial sums reduced with warp shuffles, written once by lane 0.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda.h>

#include "../bilinear.h"
#include "../ms_deform_attn.h"

namespace universal_seg {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 8;

struct Dims {
  int64_t N, S, M, D, Lq, L, P;
};

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kWarpSize * kWarpsPerBlock)
    forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                   const int64_t* __restrict__ starts, const acc_t* __restrict__ loc,
                   const acc_t* __restrict__ attn, scalar_t* __restrict__ out, const Dims d) {
  const int64_t nqm = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (nqm >= d.N * d.Lq * d.M) return;  // uniform across the warp
  const int lane = threadIdx.x % kWarpSize;
  const int64_t m = nqm % d.M, n = nqm / (d.Lq * d.M);
  const int64_t row = d.M * d.D;
  const scalar_t* value_nm = value + n * d.S * row + m * d.D;
  const int64_t sample0 = nqm * d.L * d.P;
  for (int64_t c0 = 0; c0 < d.D; c0 += kWarpSize) {
    const int64_t ch = c0 + lane;
    const bool active = ch < d.D;
    acc_t acc = 0;
    for (int64_t l = 0; l < d.L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
      for (int64_t p = 0; p < d.P; ++p) {
        const int64_t s = sample0 + l * d.P + p;
        BilinearCorners<acc_t> c;
        if (!bilinear_corners(loc[2 * s], loc[2 * s + 1], H, W, start, c)) continue;
        const acc_t a = attn[s];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.offset[k] >= 0 && active) {
            acc += a * c.weight[k] * static_cast<acc_t>(value_nm[c.offset[k] * row + ch]);
          }
        }
      }
    }
    if (active) out[nqm * d.D + ch] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kWarpSize * kWarpsPerBlock)
    backward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                    const int64_t* __restrict__ starts, const acc_t* __restrict__ loc,
                    const acc_t* __restrict__ attn, const scalar_t* __restrict__ grad_out,
                    acc_t* __restrict__ grad_value, acc_t* __restrict__ grad_loc, acc_t* __restrict__ grad_attn,
                    const Dims d) {
  const int64_t nqm = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (nqm >= d.N * d.Lq * d.M) return;  // uniform across the warp
  const int lane = threadIdx.x % kWarpSize;
  const int64_t m = nqm % d.M, n = nqm / (d.Lq * d.M);
  const int64_t row = d.M * d.D;
  const scalar_t* value_nm = value + n * d.S * row + m * d.D;
  acc_t* grad_value_nm = grad_value + n * d.S * row + m * d.D;
  const scalar_t* go = grad_out + nqm * d.D;
  // The first 32 channels' output gradient stays in a register (D <= 32 covers the common heads).
  const acc_t g_first = lane < d.D ? static_cast<acc_t>(go[lane]) : acc_t(0);
  const int64_t sample0 = nqm * d.L * d.P;
  for (int64_t l = 0; l < d.L; ++l) {
    const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
    for (int64_t p = 0; p < d.P; ++p) {
      const int64_t s = sample0 + l * d.P + p;
      BilinearCorners<acc_t> c;
      if (!bilinear_corners(loc[2 * s], loc[2 * s + 1], H, W, start, c)) continue;  // uniform
      const acc_t a = attn[s];
      acc_t d_attn = 0, d_h = 0, d_w = 0;
      for (int64_t c0 = 0; c0 < d.D; c0 += kWarpSize) {
        const int64_t ch = c0 + lane;
        if (ch >= d.D) break;
        const acc_t g = c0 == 0 ? g_first : static_cast<acc_t>(go[ch]);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.offset[k] < 0) continue;
          const int64_t idx = c.offset[k] * row + ch;
          const acc_t dot = g * static_cast<acc_t>(value_nm[idx]);
          d_attn += c.weight[k] * dot;
          d_h += c.dh[k] * dot;
          d_w += c.dw[k] * dot;
          atomicAdd(grad_value_nm + idx, a * c.weight[k] * g);
        }
      }
      d_attn = warp_sum(d_attn);
      d_h = warp_sum(d_h);
      d_w = warp_sum(d_w);
      if (lane == 0) {
        grad_attn[s] = d_attn;
        grad_loc[2 * s] = a * static_cast<acc_t>(W) * d_w;
        grad_loc[2 * s + 1] = a * static_cast<acc_t>(H) * d_h;
      }
    }
  }
}

Dims dims_of(const at::Tensor& value, const at::Tensor& sampling_loc) {
  return {value.size(0), value.size(1), value.size(2), value.size(3),
          sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4)};
}

int64_t num_blocks(const Dims& d) { return (d.N * d.Lq * d.M + kWarpsPerBlock - 1) / kWarpsPerBlock; }

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                       const at::Tensor& attn_weight) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn_forward_cuda: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(value.device());
  const Dims d = dims_of(value, sampling_loc);
  auto out = at::empty({d.N, d.Lq, d.M * d.D}, value.options());
  if (out.numel() == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<num_blocks(d), kWarpSize * kWarpsPerBlock, 0, stream>>>(
        value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(), level_start_index.data_ptr<int64_t>(),
        sampling_loc.data_ptr<acc_t>(), attn_weight.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::vector<at::Tensor> ms_deform_attn_backward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                     const at::Tensor& grad_output) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn_backward_cuda: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(value.device());
  const Dims d = dims_of(value, sampling_loc);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({d.N, d.Lq, d.M * d.D}) &&
                  grad_output.scalar_type() == value.scalar_type() && grad_output.is_contiguous() &&
                  grad_output.device() == value.device(),
              "ms_deform_attn: grad_output must be a contiguous ", value.scalar_type(), " tensor of shape [",
              d.N, ", ", d.Lq, ", ", d.M * d.D, "] on ", value.device(), ", got ", grad_output.sizes());
  auto grad_value_acc = at::zeros(value.sizes(), value.options().dtype(sampling_loc.scalar_type()));
  auto grad_loc = at::zeros_like(sampling_loc);
  auto grad_attn = at::zeros_like(attn_weight);
  if (d.N * d.Lq * d.M > 0 && d.D > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_kernel<scalar_t, acc_t><<<num_blocks(d), kWarpSize * kWarpsPerBlock, 0, stream>>>(
          value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(), level_start_index.data_ptr<int64_t>(),
          sampling_loc.data_ptr<acc_t>(), attn_weight.data_ptr<acc_t>(), grad_output.data_ptr<scalar_t>(),
          grad_value_acc.data_ptr<acc_t>(), grad_loc.data_ptr<acc_t>(), grad_attn.data_ptr<acc_t>(), d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_value_acc.to(value.scalar_type()), grad_loc, grad_attn};
}

int ms_deform_attn_cuda_version() { return CUDA_VERSION; }

}  // namespace universal_seg
