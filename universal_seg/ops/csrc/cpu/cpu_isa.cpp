// Runtime choice of the CPU kernels' instruction set: see cpu_isa.h.
#include "cpu_isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace universal_seg {
namespace {

bool cpu_can_run(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kDefault:
      return true;
#if defined(__GNUC__) && defined(__x86_64__)
    case CpuIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuIsa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    default:
      return false;  // not compiled into this build (not x86-64, or a compiler without target attributes)
  }
}

std::string supported_list() {
  std::string out;
  for (const auto& name : supported_cpu_isas()) out += (out.empty() ? "" : ", ") + name;
  return out;
}

CpuIsa best_supported() {
  for (CpuIsa isa : {CpuIsa::kAvx512, CpuIsa::kAvx2}) {
    if (cpu_can_run(isa)) return isa;
  }
  return CpuIsa::kDefault;
}

// Parses UNIVERSAL_SEG_CPU_ISA; returns false with `error` set when it is unknown or unsupported.
bool choose(CpuIsa& isa, std::string& error) {
  const char* env = std::getenv("UNIVERSAL_SEG_CPU_ISA");
  const std::string name = env == nullptr ? "" : env;
  if (name.empty() || name == "auto") {
    isa = best_supported();
    return true;
  }
  for (CpuIsa candidate : {CpuIsa::kDefault, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (name != cpu_isa_name(candidate)) continue;
    if (!cpu_can_run(candidate)) {
      error = "UNIVERSAL_SEG_CPU_ISA=" + name + " but this CPU or build cannot run the " + name +
              " kernels; unset it or set it to one of: " + supported_list();
      return false;
    }
    isa = candidate;
    return true;
  }
  error = "UNIVERSAL_SEG_CPU_ISA=" + name + " is not a known instruction set; unset it or set it to auto, default, "
          "avx2 or avx512";
  return false;
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512:
      return "avx512";
    default:
      return "default";
  }
}

std::vector<std::string> supported_cpu_isas() {
  std::vector<std::string> names;
  for (CpuIsa isa : {CpuIsa::kDefault, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (cpu_can_run(isa)) names.emplace_back(cpu_isa_name(isa));
  }
  return names;
}

CpuIsa active_cpu_isa() {
  // read once: the environment is parsed at the first kernel call of the process
  static std::string error;
  static const CpuIsa isa = [] {
    CpuIsa chosen = CpuIsa::kDefault;
    if (!choose(chosen, error)) return CpuIsa::kDefault;
    return chosen;
  }();
  TORCH_CHECK(error.empty(), error);
  return isa;
}

}  // namespace universal_seg
