// CUDA kernels of multi-scale deformable attention (forward and backward). Shapes and sampling
// convention: see ../ms_deform_attn.h.
//
// Work split: one "item" is one (n, query, head). A group of T threads (T a power of two <= 32, a slice of one
// warp) handles one item; each thread owns V consecutive channels of the head (one vector: float4, 8 x bf16 / fp16
// in the forward, 4 in the backward, ...) and, when D > T * V, the chunks T * V apart. V and T are chosen per call
// from the channel count and the dtype (`launch_layout`): for Mask2Former's D = 32, the bf16 forward uses 4 threads
// x 8 channels per item and fp32 8 threads x 4 channels, so every load and store of value, output and grad_output
// is a vector access. A D that is not a multiple of the vector width, or a misaligned tensor, takes the scalar
// layout (V = 1, one warp per item).
//
// Sums run in the opmath type (fp32 for fp16 / bf16 / fp32, fp64 for fp64). Backward: the location and weight
// gradients of a sample are per-thread partial sums over its channels, reduced over the group with warp shuffles
// and written once (no atomics). The value gradient is scattered with atomicAdd into an opmath buffer (cast to
// value's dtype at the end, so fp16 / bf16 gradients do not lose mass in half-precision atomics); on sm_90 and
// newer a float4 / float2 is added in one atomic instruction. Atomics make the float sums' order, and so the last
// bits of grad_value, vary between runs: under torch.use_deterministic_algorithms(True) the backward raises
// (or warns, with warn_only=True), as PyTorch's own atomic-based kernels do.
//
// spatial_shapes / level_start_index live on the device here; each group checks them against the value length
// before it reads (an inconsistent table stops the kernel with a device-side assertion instead of reading out of
// bounds), so no host synchronisation is needed. The Python wrapper validates host-side tables on the host.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <cuda.h>

#include <algorithm>
#include <climits>
#include <type_traits>

#include "../bilinear.h"
#include "../ms_deform_attn.h"

namespace universal_seg {
namespace {

constexpr int kWarpSize = 32;
constexpr int kThreadsPerBlock = 256;

struct Dims {
  int64_t N, S, M, D, Lq, L, P;
};

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// Sum over the T lanes of this thread's aligned group of a warp (T a power of two <= 32). The mask names the
// group only: the other groups of the warp work on other items and may be elsewhere in their loops, or gone.
template <int T, typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v) {
  const unsigned lane = threadIdx.x % kWarpSize;
  const unsigned mask = (T == kWarpSize ? 0xffffffffu : ((1u << T) - 1u)) << (lane / T * T);
#pragma unroll
  for (int offset = T / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(mask, v, offset);
  return v;
}

// Checks the level table against the value length once per group: start of level l = sum of the earlier areas,
// every size positive, total = S. Violations trap (device-side assertion), so no sample can read out of bounds.
__device__ __forceinline__ void assert_level_table(const int64_t* shapes, const int64_t* starts, const Dims& d) {
  int64_t total = 0;
  for (int64_t l = 0; l < d.L; ++l) {
    const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
    CUDA_KERNEL_ASSERT(H > 0 && W > 0 && starts[l] == total &&
                       "ms_deform_attn: spatial_shapes / level_start_index do not match value's length S");
    total += H * W;
  }
  CUDA_KERNEL_ASSERT(total == d.S && "ms_deform_attn: spatial_shapes do not cover value's length S");
}

template <typename scalar_t, typename acc_t, int V, int T>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                   const int64_t* __restrict__ starts, const acc_t* __restrict__ loc,
                   const acc_t* __restrict__ attn, scalar_t* __restrict__ out, const Dims d) {
  using VecT = Vec<scalar_t, V>;
  const int64_t item = (static_cast<int64_t>(blockIdx.x) * kThreadsPerBlock + threadIdx.x) / T;
  if (item >= d.N * d.Lq * d.M) return;  // uniform across the group
  const int t = threadIdx.x % T;
  assert_level_table(shapes, starts, d);
  const int64_t m = item % d.M, n = item / (d.Lq * d.M);
  const int64_t row = d.M * d.D;
  const scalar_t* value_nm = value + n * d.S * row + m * d.D;
  const int64_t sample0 = item * d.L * d.P;
  for (int64_t c0 = static_cast<int64_t>(t) * V; c0 < d.D; c0 += static_cast<int64_t>(T) * V) {
    acc_t acc[V];
#pragma unroll
    for (int j = 0; j < V; ++j) acc[j] = 0;
    for (int64_t l = 0; l < d.L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
      for (int64_t p = 0; p < d.P; ++p) {
        const int64_t s = sample0 + l * d.P + p;
        BilinearCorners<acc_t> c;
        if (!bilinear_corners(loc[2 * s], loc[2 * s + 1], H, W, start, c)) continue;
        const acc_t a = attn[s];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.offset[k] < 0) continue;
          const VecT x = *reinterpret_cast<const VecT*>(value_nm + c.offset[k] * row + c0);
          const acc_t w = a * c.weight[k];
#pragma unroll
          for (int j = 0; j < V; ++j) acc[j] += w * static_cast<acc_t>(x.v[j]);
        }
      }
    }
    VecT y;
#pragma unroll
    for (int j = 0; j < V; ++j) y.v[j] = static_cast<scalar_t>(acc[j]);
    *reinterpret_cast<VecT*>(out + item * d.D + c0) = y;
  }
}

// grad_value[i .. i + V) += g[0 .. V): one vector atomic where the hardware has it (sm_90+: float2 / float4).
template <typename acc_t, int V>
__device__ __forceinline__ void atomic_add_vec(acc_t* dst, const acc_t (&g)[V]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kVectorAtomics = std::is_same_v<acc_t, float> && V % 2 == 0;
#else
  constexpr bool kVectorAtomics = false;
#endif
  if constexpr (kVectorAtomics && V % 4 == 0) {
#pragma unroll
    for (int j = 0; j < V; j += 4) {
      atomicAdd(reinterpret_cast<float4*>(dst + j), make_float4(g[j], g[j + 1], g[j + 2], g[j + 3]));
    }
  } else if constexpr (kVectorAtomics) {
#pragma unroll
    for (int j = 0; j < V; j += 2) atomicAdd(reinterpret_cast<float2*>(dst + j), make_float2(g[j], g[j + 1]));
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) atomicAdd(dst + j, g[j]);
  }
}

template <typename scalar_t, typename acc_t, int V, int T>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                    const int64_t* __restrict__ starts, const acc_t* __restrict__ loc,
                    const acc_t* __restrict__ attn, const scalar_t* __restrict__ grad_out,
                    acc_t* __restrict__ grad_value, acc_t* __restrict__ grad_loc, acc_t* __restrict__ grad_attn,
                    const Dims d) {
  using VecT = Vec<scalar_t, V>;
  const int64_t item = (static_cast<int64_t>(blockIdx.x) * kThreadsPerBlock + threadIdx.x) / T;
  if (item >= d.N * d.Lq * d.M) return;  // whole groups leave together (T divides 32): see group_sum
  const int t = threadIdx.x % T;
  assert_level_table(shapes, starts, d);
  const int64_t m = item % d.M, n = item / (d.Lq * d.M);
  const int64_t row = d.M * d.D;
  const scalar_t* value_nm = value + n * d.S * row + m * d.D;
  acc_t* grad_value_nm = grad_value + n * d.S * row + m * d.D;
  const scalar_t* go = grad_out + item * d.D;
  const int64_t sample0 = item * d.L * d.P;
  for (int64_t l = 0; l < d.L; ++l) {
    const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
    for (int64_t p = 0; p < d.P; ++p) {
      const int64_t s = sample0 + l * d.P + p;
      BilinearCorners<acc_t> c;
      if (!bilinear_corners(loc[2 * s], loc[2 * s + 1], H, W, start, c)) continue;  // uniform over the group
      const acc_t a = attn[s];
      acc_t d_attn = 0, d_h = 0, d_w = 0;
      for (int64_t c0 = static_cast<int64_t>(t) * V; c0 < d.D; c0 += static_cast<int64_t>(T) * V) {
        const VecT gv = *reinterpret_cast<const VecT*>(go + c0);
        acc_t g[V];
#pragma unroll
        for (int j = 0; j < V; ++j) g[j] = static_cast<acc_t>(gv.v[j]);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.offset[k] < 0) continue;
          const int64_t idx = c.offset[k] * row + c0;
          const VecT x = *reinterpret_cast<const VecT*>(value_nm + idx);
          acc_t dot = 0;
          acc_t contrib[V];
          const acc_t w = a * c.weight[k];
#pragma unroll
          for (int j = 0; j < V; ++j) {
            dot += g[j] * static_cast<acc_t>(x.v[j]);
            contrib[j] = w * g[j];
          }
          d_attn += c.weight[k] * dot;
          d_h += c.dh[k] * dot;
          d_w += c.dw[k] * dot;
          atomic_add_vec<acc_t, V>(grad_value_nm + idx, contrib);
        }
      }
      d_attn = group_sum<T>(d_attn);
      d_h = group_sum<T>(d_h);
      d_w = group_sum<T>(d_w);
      if (t == 0) {
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

int64_t num_blocks(const Dims& d, int T) {
  const int64_t threads = d.N * d.Lq * d.M * T;
  const int64_t blocks = (threads + kThreadsPerBlock - 1) / kThreadsPerBlock;
  TORCH_CHECK(blocks <= INT_MAX, "ms_deform_attn: ", d.N, " x ", d.Lq, " x ", d.M,
              " (batch x queries x heads) needs more CUDA blocks than the grid allows (2^31 - 1); "
              "split the batch or the queries into several calls");
  return blocks;
}

// Kernel launches for a layout chosen at run time (see launch_layout): V and T become template arguments.
// kMaxVector: the widest vector (elements) a kernel uses. The backward stops at 4: for fp16 / bf16 that is an
// 8-byte load and twice the threads per item of a 16-byte one, which pays where each thread also issues the
// value-gradient atomics (benchmarks/gpu_op.py; the README's GPU section has the numbers).
struct ForwardArgs {
  static constexpr int kMaxVector = 8;
  const at::Tensor &value, &shapes, &starts, &loc, &attn, &out;
};

#ifndef UNIVERSAL_SEG_BWD_MAX_VECTOR  // build-time override for measurements (NVCC_APPEND_FLAGS=-D...)
#define UNIVERSAL_SEG_BWD_MAX_VECTOR 4
#endif

struct BackwardArgs {
  static constexpr int kMaxVector = UNIVERSAL_SEG_BWD_MAX_VECTOR;
  const at::Tensor &value, &shapes, &starts, &loc, &attn, &grad_out, &grad_value, &grad_loc, &grad_attn;
};

template <typename scalar_t, int V, int T>
void launch(const ForwardArgs& a, const Dims& d, int64_t blocks, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  forward_kernel<scalar_t, acc_t, V, T><<<blocks, kThreadsPerBlock, 0, stream>>>(
      a.value.data_ptr<scalar_t>(), a.shapes.data_ptr<int64_t>(), a.starts.data_ptr<int64_t>(),
      a.loc.data_ptr<acc_t>(), a.attn.data_ptr<acc_t>(), a.out.data_ptr<scalar_t>(), d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int V, int T>
void launch(const BackwardArgs& a, const Dims& d, int64_t blocks, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  backward_kernel<scalar_t, acc_t, V, T><<<blocks, kThreadsPerBlock, 0, stream>>>(
      a.value.data_ptr<scalar_t>(), a.shapes.data_ptr<int64_t>(), a.starts.data_ptr<int64_t>(),
      a.loc.data_ptr<acc_t>(), a.attn.data_ptr<acc_t>(), a.grad_out.data_ptr<scalar_t>(),
      a.grad_value.data_ptr<acc_t>(), a.grad_loc.data_ptr<acc_t>(), a.grad_attn.data_ptr<acc_t>(), d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int V, typename Args>
void launch_t(const Args& a, const Dims& d, int T, cudaStream_t stream) {
  const int64_t blocks = num_blocks(d, T);
  switch (T) {
    case 1: launch<scalar_t, V, 1>(a, d, blocks, stream); break;
    case 2: launch<scalar_t, V, 2>(a, d, blocks, stream); break;
    case 4: launch<scalar_t, V, 4>(a, d, blocks, stream); break;
    case 8: launch<scalar_t, V, 8>(a, d, blocks, stream); break;
    case 16: launch<scalar_t, V, 16>(a, d, blocks, stream); break;
    default: launch<scalar_t, V, 32>(a, d, blocks, stream); break;
  }
}

// Launches the kernel for one call's layout: V = the widest vector of the dtype allowed by Args::kMaxVector (at most
// 16 bytes) when it divides D and every base pointer in `pointers` is aligned to it, with a group of T = the power
// of two >= D / V threads (at most one warp); otherwise the scalar layout, V = 1 with one warp per item. Two widths
// per dtype keep the number of compiled kernels (and the build time for many architectures) small.
template <typename scalar_t, typename Args>
void launch_layout(const Args& a, const Dims& d, std::initializer_list<const void*> pointers, cudaStream_t stream) {
  constexpr int kV = std::min<int>(16 / sizeof(scalar_t), Args::kMaxVector);
  bool vectorised = d.D % kV == 0;
  for (const void* ptr : pointers) {
    vectorised = vectorised && reinterpret_cast<uintptr_t>(ptr) % (kV * sizeof(scalar_t)) == 0;
  }
  if (!vectorised) {
    launch<scalar_t, 1, kWarpSize>(a, d, num_blocks(d, kWarpSize), stream);
    return;
  }
  int T = 1;
  while (T < d.D / kV && T < kWarpSize) T *= 2;
  launch_t<scalar_t, kV>(a, d, T, stream);
}

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
    launch_layout<scalar_t>(ForwardArgs{value, spatial_shapes, level_start_index, sampling_loc, attn_weight, out}, d,
                            {value.data_ptr(), out.data_ptr()}, stream);
  });
  return out;
}

std::vector<at::Tensor> ms_deform_attn_backward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                     const at::Tensor& grad_output) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn_backward_cuda: tensors must be on a CUDA device");
  at::globalContext().alertNotDeterministic(
      "ms_deform_attn_backward_cuda (universal_seg's MSDeformAttn: value gradients are accumulated with atomicAdd)");
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
      // grad_value_acc is a fresh (256-byte aligned) buffer addressed with value's offsets: V fits it too
      launch_layout<scalar_t>(BackwardArgs{value, spatial_shapes, level_start_index, sampling_loc, attn_weight,
                                           grad_output, grad_value_acc, grad_loc, grad_attn},
                              d, {value.data_ptr(), grad_output.data_ptr()}, stream);
    });
  }
  return {grad_value_acc.to(value.scalar_type()), grad_loc, grad_attn};
}

int ms_deform_attn_cuda_version() { return CUDA_VERSION; }

}  // namespace universal_seg
