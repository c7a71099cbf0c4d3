// Runtime choice of the instruction set the CPU kernels run with (one binary, several compiled variants).
//
// The kernels are compiled for the baseline of the target ("default": SSE2 on x86-64) and, on x86-64 with GCC or
// clang, also for AVX2 + FMA and for AVX-512 (F, VL, BW, DQ) through function target attributes. The variant is
// chosen once per process, at the first kernel call: the best one the CPU supports, or the one named by the
// environment variable UNIVERSAL_SEG_CPU_ISA (default | avx2 | avx512 | auto). Naming a variant this CPU or this
// build cannot run raises an error that lists the ones it can.
#pragma once
#include <string>
#include <vector>

namespace universal_seg {

enum class CpuIsa { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

const char* cpu_isa_name(CpuIsa isa);

// The variants this build contains and this CPU can execute, in increasing order ("default" first).
std::vector<std::string> supported_cpu_isas();

// The variant the kernels use in this process (read from UNIVERSAL_SEG_CPU_ISA once). Raises c10::Error when the
// variable names an unknown or unsupported variant (on every call, so the error is never silently replaced).
CpuIsa active_cpu_isa();

}  // namespace universal_seg
