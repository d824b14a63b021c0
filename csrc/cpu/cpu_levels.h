// The entry points of each SIMD level's copy of the CPU kernels.
//
// csrc/cpu/overlap_cpu.cc defines them once per level, in the level's
// namespace (core/simd_level.h); csrc/cpu/cpu_dispatch.cc, compiled for the
// x86-64 baseline, calls the copy this CPU runs. Inputs are validated by then.
#pragma once

#include <string>

#include "core/confusion.h"
#include "core/overlap_kernels.h"

#define FASTIOU_CPU_LEVEL_ENTRY_POINTS(ns)                                                  \
  namespace fastiou {                                                                       \
  namespace ns {                                                                            \
  std::string overlap_stats_level(const StatsArgs& args, const ParallelFor& parallel_for); \
  std::string overlap_grad_level(const GradArgs& args, const ParallelFor& parallel_for);   \
  std::string confusion_counts_level(const ConfusionArgs& args, const ParallelFor& parallel_for); \
  }                                                                                         \
  }

#if defined(FASTIOU_CPU_LEVEL_NS)
FASTIOU_CPU_LEVEL_ENTRY_POINTS(FASTIOU_CPU_LEVEL_NS)
#endif
