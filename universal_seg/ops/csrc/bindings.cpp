// Python bindings of universal_seg._C: device dispatch for the multi-scale deformable attention kernels.
#include <torch/extension.h>

#include "cpu/cpu_isa.h"
#include "ms_deform_attn.h"

namespace universal_seg {
namespace {

constexpr const char* kNoCuda =
    "universal_seg._C was built without CUDA, so it cannot run on CUDA tensors; reinstall with nvcc on PATH "
    "(or CUDA_HOME set): pip install --no-build-isolation -e .";

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const at::Tensor& sampling_loc, const at::Tensor& attn_weight) {
  if (value.is_cuda()) {
#ifdef UNIVERSAL_SEG_WITH_CUDA
    return ms_deform_attn_forward_cuda(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
#else
    TORCH_CHECK(false, kNoCuda);
#endif
  }
  return ms_deform_attn_forward_cpu(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
}

std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                 const at::Tensor& attn_weight, const at::Tensor& grad_output) {
  if (value.is_cuda()) {
#ifdef UNIVERSAL_SEG_WITH_CUDA
    return ms_deform_attn_backward_cuda(value, spatial_shapes, level_start_index, sampling_loc, attn_weight,
                                        grad_output);
#else
    TORCH_CHECK(false, kNoCuda);
#endif
  }
  return ms_deform_attn_backward_cpu(value, spatial_shapes, level_start_index, sampling_loc, attn_weight,
                                     grad_output);
}

// CUDA runtime version the CUDA kernels were compiled against (e.g. 13000), or 0 for a CPU-only build.
int cuda_version() {
#ifdef UNIVERSAL_SEG_WITH_CUDA
  return ms_deform_attn_cuda_version();
#else
  return 0;
#endif
}

// The CUDA targets the kernels were compiled for, e.g. "sm_75;sm_86;sm_90;compute_90" ("" for a CPU-only build).
std::string cuda_targets() {
#if defined(UNIVERSAL_SEG_WITH_CUDA) && defined(UNIVERSAL_SEG_CUDA_TARGETS)
#define US_STRINGIFY_(x) #x
#define US_STRINGIFY(x) US_STRINGIFY_(x)
  std::string targets = US_STRINGIFY(UNIVERSAL_SEG_CUDA_TARGETS);  // ';' travels as "__" through the build
  for (size_t at = targets.find("__"); at != std::string::npos; at = targets.find("__", at + 1)) {
    targets.replace(at, 2, ";");
  }
  return targets;
#else
  return "";
#endif
}

std::string cpu_isa() { return cpu_isa_name(active_cpu_isa()); }

}  // namespace
}  // namespace universal_seg

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "universal_seg compiled ops (multi-scale deformable attention, CPU and CUDA)";
  m.def("ms_deform_attn_forward", &universal_seg::forward, "MSDeformAttn forward (CPU or CUDA by device)");
  m.def("ms_deform_attn_backward", &universal_seg::backward, "MSDeformAttn backward (CPU or CUDA by device)");
  m.def("cuda_version", &universal_seg::cuda_version,
        "CUDA version the CUDA kernels were compiled with, 0 when the build has no CUDA kernels");
  m.def("cuda_targets", &universal_seg::cuda_targets,
        "CUDA targets of the kernels, e.g. 'sm_86;sm_90;compute_90' ('' when the build has no CUDA kernels)");
  m.def("cpu_isa", &universal_seg::cpu_isa,
        "Instruction set the CPU kernels run with in this process: 'default', 'avx2' or 'avx512' (the best the CPU "
        "supports, or UNIVERSAL_SEG_CPU_ISA, read once); raises when that variable names one it cannot run");
  m.def("supported_cpu_isas", &universal_seg::supported_cpu_isas,
        "Instruction sets of the CPU kernels this build contains and this CPU can run, 'default' first");
}
