// The namespace of one SIMD level's copy of the CPU kernels.
//
// The CPU kernels (csrc/cpu/overlap_cpu.cc) are compiled once per x86-64
// level, each copy with its own -march, and the dispatcher
// (csrc/cpu/cpu_dispatch.cc) picks one at run time. An inline function or a
// template instantiated in two of those copies would have one name, and the
// linker keeps one copy of each name for the whole library: an AVX-512 copy
// could then run on an AVX2 CPU and crash it. So every inline definition that
// kernel code uses lives in a namespace of its level: the build defines
// FASTIOU_CPU_LEVEL_NS (cpu_v3, ...) for each copy, and the headers below open
// it as an inline namespace, so code names them as before. Elsewhere (the
// CUDA kernels, the adapters) the macros are empty. The build checks the
// compiled copies: every global name they define lies in their level's
// namespace (cmake/check_level_symbols.cmake).
#pragma once

#if defined(FASTIOU_CPU_LEVEL_NS)
#define FASTIOU_LEVEL_BEGIN inline namespace FASTIOU_CPU_LEVEL_NS {
#define FASTIOU_LEVEL_END }
#else
#define FASTIOU_LEVEL_BEGIN
#define FASTIOU_LEVEL_END
#endif
