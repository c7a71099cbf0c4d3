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
#include "cpu_isa.h"

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

// Instruction-set variants (see cpu_isa.h). The kernel bodies below are always-inline templates with no target of
// their own; each variant is a function with a target attribute that inlines them, so the same source is compiled
// once per instruction set. Only those functions (internal linkage) contain AVX code: nothing shared with the rest
// of the binary (inline library functions, templates instantiated elsewhere) is compiled for a wider ISA.
#if defined(__GNUC__)
#define US_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define US_ALWAYS_INLINE inline
#endif
#if defined(__GNUC__) && defined(__x86_64__)
#define US_X86_VARIANTS 1
#define US_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define US_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#else
#define US_X86_VARIANTS 0
#endif

// The channel count the variants are also specialised for (Mask2Former: 256 dims / 8 heads): a compile-time D lets
// the compiler keep the accumulator of one (query, head) in vector registers.
constexpr int kSpecialisedD = 32;

template <typename scalar_t>
struct KernelArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* value;  // head-major [N, M, S, D]
  const int64_t* shapes;  // [L, 2]
  const int64_t* starts;  // [L]
  const acc_t* loc;       // [N, Lq, M, L, P, 2]
  const acc_t* attn;      // [N, Lq, M, L, P]
  scalar_t* out;          // forward: [N, Lq, M * D]
  const scalar_t* grad_out;  // backward: [N, Lq, M * D]
  acc_t* grad_value;      // backward: head-major [N, M, S, D]
  acc_t* grad_loc;        // backward: like loc
  acc_t* grad_attn;       // backward: like attn
  Dims d;
};

// Forward of the (n, q) rows [begin, end): out[n, q, m, :] = sum over (l, p, corner) of attn * weight * value.
// kD > 0: D == kD known at compile time (`scratch` unused); kD == 0: runtime D, `scratch` holds D accumulators.
template <typename scalar_t, int kD>
US_ALWAYS_INLINE void forward_rows(const KernelArgs<scalar_t>& a, int64_t begin, int64_t end,
                                   at::opmath_type<scalar_t>* scratch) {
  using acc_t = at::opmath_type<scalar_t>;
  const Dims& d = a.d;
  const int64_t D = kD > 0 ? kD : d.D;
  acc_t local[kD > 0 ? kD : 1];
  acc_t* acc = kD > 0 ? local : scratch;
  for (int64_t nq = begin; nq < end; ++nq) {
    const int64_t n = nq / d.Lq;
    for (int64_t m = 0; m < d.M; ++m) {
      for (int64_t ch = 0; ch < D; ++ch) acc[ch] = acc_t(0);
      const scalar_t* value_nm = a.value + (n * d.M + m) * d.S * D;
      const int64_t sample0 = (nq * d.M + m) * d.L * d.P;  // index of this (n, q, m)'s first sample
      for (int64_t l = 0; l < d.L; ++l) {
        for (int64_t p = 0; p < d.P; ++p) {
          const int64_t s = sample0 + l * d.P + p;
          BilinearCorners<acc_t> c;
          if (!bilinear_corners(a.loc[2 * s], a.loc[2 * s + 1], a.shapes[2 * l], a.shapes[2 * l + 1], a.starts[l],
                                c)) {
            continue;
          }
          for (int k = 0; k < 4; ++k) {
            if (c.offset[k] < 0) continue;
            const scalar_t* v = value_nm + c.offset[k] * D;
            const acc_t w = a.attn[s] * c.weight[k];
#pragma omp simd
            for (int64_t ch = 0; ch < D; ++ch) acc[ch] += w * static_cast<acc_t>(v[ch]);
          }
        }
      }
      scalar_t* o = a.out + (nq * d.M + m) * D;
      for (int64_t ch = 0; ch < D; ++ch) o[ch] = static_cast<scalar_t>(acc[ch]);
    }
  }
}

// Backward of the (n, head, level) tasks [begin, end): each task owns its grad_value slice (no atomics).
// kD / scratch as in forward_rows.
template <typename scalar_t, int kD>
US_ALWAYS_INLINE void backward_tasks(const KernelArgs<scalar_t>& a, int64_t begin, int64_t end,
                                     at::opmath_type<scalar_t>* scratch) {
  using acc_t = at::opmath_type<scalar_t>;
  const Dims& d = a.d;
  const int64_t D = kD > 0 ? kD : d.D;
  acc_t local[kD > 0 ? kD : 1];
  acc_t* g = kD > 0 ? local : scratch;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t l = task % d.L, m = (task / d.L) % d.M, n = task / (d.L * d.M);
    const int64_t H = a.shapes[2 * l], W = a.shapes[2 * l + 1];
    const scalar_t* value_nm = a.value + (n * d.M + m) * d.S * D;
    acc_t* grad_value_nm = a.grad_value + (n * d.M + m) * d.S * D;
    for (int64_t q = 0; q < d.Lq; ++q) {
      const int64_t nqm = (n * d.Lq + q) * d.M + m;
      const scalar_t* go = a.grad_out + nqm * D;
      for (int64_t ch = 0; ch < D; ++ch) g[ch] = static_cast<acc_t>(go[ch]);
      for (int64_t p = 0; p < d.P; ++p) {
        const int64_t s = (nqm * d.L + l) * d.P + p;
        BilinearCorners<acc_t> c;
        if (!bilinear_corners(a.loc[2 * s], a.loc[2 * s + 1], H, W, a.starts[l], c)) continue;
        const acc_t w_attn = a.attn[s];
        acc_t d_attn = 0, d_h = 0, d_w = 0;
        for (int k = 0; k < 4; ++k) {
          if (c.offset[k] < 0) continue;
          const scalar_t* v = value_nm + c.offset[k] * D;
          acc_t* gv = grad_value_nm + c.offset[k] * D;
          const acc_t coef = w_attn * c.weight[k];
          acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t ch = 0; ch < D; ++ch) {
            dot += g[ch] * static_cast<acc_t>(v[ch]);
            gv[ch] += coef * g[ch];
          }
          d_attn += c.weight[k] * dot;
          d_h += c.dh[k] * dot;
          d_w += c.dw[k] * dot;
        }
        a.grad_attn[s] = d_attn;
        a.grad_loc[2 * s] = w_attn * static_cast<acc_t>(W) * d_w;
        a.grad_loc[2 * s + 1] = w_attn * static_cast<acc_t>(H) * d_h;
      }
    }
  }
}

template <typename scalar_t>
using RangeFn = void (*)(const KernelArgs<scalar_t>&, int64_t, int64_t, at::opmath_type<scalar_t>*);

// One forward and one backward function per instruction set, each choosing the specialised D at run time.
#define US_DEFINE_VARIANTS(SUFFIX, TARGET)                                                                        \
  template <typename scalar_t>                                                                                     \
  TARGET void forward_##SUFFIX(const KernelArgs<scalar_t>& a, int64_t begin, int64_t end,                          \
                               at::opmath_type<scalar_t>* scratch) {                                               \
    if (a.d.D == kSpecialisedD) {                                                                                  \
      forward_rows<scalar_t, kSpecialisedD>(a, begin, end, scratch);                                               \
    } else {                                                                                                       \
      forward_rows<scalar_t, 0>(a, begin, end, scratch);                                                           \
    }                                                                                                              \
  }                                                                                                                \
  template <typename scalar_t>                                                                                     \
  TARGET void backward_##SUFFIX(const KernelArgs<scalar_t>& a, int64_t begin, int64_t end,                         \
                                at::opmath_type<scalar_t>* scratch) {                                              \
    if (a.d.D == kSpecialisedD) {                                                                                  \
      backward_tasks<scalar_t, kSpecialisedD>(a, begin, end, scratch);                                             \
    } else {                                                                                                       \
      backward_tasks<scalar_t, 0>(a, begin, end, scratch);                                                         \
    }                                                                                                              \
  }

US_DEFINE_VARIANTS(default, )
#if US_X86_VARIANTS
US_DEFINE_VARIANTS(avx2, US_TARGET_AVX2)
US_DEFINE_VARIANTS(avx512, US_TARGET_AVX512)
#endif

template <typename scalar_t>
RangeFn<scalar_t> forward_variant(CpuIsa isa) {
  switch (isa) {
#if US_X86_VARIANTS
    case CpuIsa::kAvx512:
      return &forward_avx512<scalar_t>;
    case CpuIsa::kAvx2:
      return &forward_avx2<scalar_t>;
#endif
    default:
      return &forward_default<scalar_t>;
  }
}

template <typename scalar_t>
RangeFn<scalar_t> backward_variant(CpuIsa isa) {
  switch (isa) {
#if US_X86_VARIANTS
    case CpuIsa::kAvx512:
      return &backward_avx512<scalar_t>;
    case CpuIsa::kAvx2:
      return &backward_avx2<scalar_t>;
#endif
    default:
      return &backward_default<scalar_t>;
  }
}

// Forward parallelised over (n, query); each chunk gets its own accumulator scratch (used when D is not specialised).
template <typename scalar_t>
void forward_kernel(const KernelArgs<scalar_t>& a, CpuIsa isa) {
  const RangeFn<scalar_t> fn = forward_variant<scalar_t>(isa);
  at::parallel_for(0, a.d.N * a.d.Lq, 16, [&](int64_t begin, int64_t end) {
    std::vector<at::opmath_type<scalar_t>> scratch(a.d.D);
    fn(a, begin, end, scratch.data());
  });
}

// Backward parallelised over (n, head, level): the grad_value slices of different tasks are disjoint.
template <typename scalar_t>
void backward_kernel(const KernelArgs<scalar_t>& a, CpuIsa isa) {
  const RangeFn<scalar_t> fn = backward_variant<scalar_t>(isa);
  at::parallel_for(0, a.d.N * a.d.M * a.d.L, 1, [&](int64_t begin, int64_t end) {
    std::vector<at::opmath_type<scalar_t>> scratch(a.d.D);
    fn(a, begin, end, scratch.data());
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
  const CpuIsa isa = active_cpu_isa();
  auto out = at::empty({d.N, d.Lq, d.M * d.D}, value.options());
  const auto value_hm = value.permute({0, 2, 1, 3}).contiguous();  // [N, M, S, D]
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    KernelArgs<scalar_t> args{value_hm.data_ptr<scalar_t>(),
                              spatial_shapes.data_ptr<int64_t>(),
                              level_start_index.data_ptr<int64_t>(),
                              sampling_loc.data_ptr<acc_t>(),
                              attn_weight.data_ptr<acc_t>(),
                              out.data_ptr<scalar_t>(),
                              nullptr,
                              nullptr,
                              nullptr,
                              nullptr,
                              d};
    forward_kernel<scalar_t>(args, isa);
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
  const CpuIsa isa = active_cpu_isa();
  const auto acc_type = sampling_loc.scalar_type();
  // grad_value is accumulated in the opmath type (fp32 for half types) and cast at the end.
  const auto value_hm = value.permute({0, 2, 1, 3}).contiguous();  // [N, M, S, D]
  auto grad_value_hm = at::zeros({d.N, d.M, d.S, d.D}, value.options().dtype(acc_type));
  auto grad_loc = at::zeros_like(sampling_loc);
  auto grad_attn = at::zeros_like(attn_weight);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    KernelArgs<scalar_t> args{value_hm.data_ptr<scalar_t>(),
                              spatial_shapes.data_ptr<int64_t>(),
                              level_start_index.data_ptr<int64_t>(),
                              sampling_loc.data_ptr<acc_t>(),
                              attn_weight.data_ptr<acc_t>(),
                              nullptr,
                              grad_output.data_ptr<scalar_t>(),
                              grad_value_hm.data_ptr<acc_t>(),
                              grad_loc.data_ptr<acc_t>(),
                              grad_attn.data_ptr<acc_t>(),
                              d};
    backward_kernel<scalar_t>(args, isa);
  });
  auto grad_value = grad_value_hm.permute({0, 2, 1, 3}).to(value.scalar_type()).contiguous();  // [N, S, M, D]
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace universal_seg
