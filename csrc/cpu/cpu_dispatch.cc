// Runs the CPU kernels' copy for this CPU's SIMD level.
//
// Compiled for the x86-64 baseline: nothing here may need more than the
// oldest CPU it runs on. The level copies are declared in cpu/cpu_levels.h
// and built by CMakeLists.txt, which sets FASTIOU_CPU_DISPATCH (one copy per
// x86-64 level) or FASTIOU_CPU_ARCH_NAME (one copy for that -march).
#include <xmmintrin.h>

#include <atomic>
#include <cstdlib>
#include <functional>
#include <new>
#include <string>

#include "core/overlap_kernels.h"
#include "cpu/cpu_levels.h"

#if !defined(__x86_64__)
#error "fastiou's CPU kernels are built for x86-64 only"
#endif

#if FASTIOU_CPU_DISPATCH
FASTIOU_CPU_LEVEL_ENTRY_POINTS(cpu_v2)
FASTIOU_CPU_LEVEL_ENTRY_POINTS(cpu_v3)
FASTIOU_CPU_LEVEL_ENTRY_POINTS(cpu_v4)
#else
FASTIOU_CPU_LEVEL_ENTRY_POINTS(cpu_native)
#endif

namespace fastiou {
namespace {

struct LevelKernels {
  const char* name;
  int level;  // the x86-64 level it needs; 0: the build machine's, unchecked
  std::string (*stats)(const StatsArgs&, const ParallelFor&);
  std::string (*grad)(const GradArgs&, const ParallelFor&);
  std::string (*confusion)(const ConfusionArgs&, const ParallelFor&);
};

// Lowest first.
constexpr LevelKernels kLevels[] = {
#if FASTIOU_CPU_DISPATCH
    {"x86-64-v2", 2, &cpu_v2::overlap_stats_level, &cpu_v2::overlap_grad_level,
     &cpu_v2::confusion_counts_level},
    {"x86-64-v3", 3, &cpu_v3::overlap_stats_level, &cpu_v3::overlap_grad_level,
     &cpu_v3::confusion_counts_level},
    {"x86-64-v4", 4, &cpu_v4::overlap_stats_level, &cpu_v4::overlap_grad_level,
     &cpu_v4::confusion_counts_level},
#else
    {"-march=" FASTIOU_CPU_ARCH_NAME, 0, &cpu_native::overlap_stats_level, &cpu_native::overlap_grad_level,
     &cpu_native::confusion_counts_level},
#endif
};
constexpr int kLevelCount = sizeof(kLevels) / sizeof(kLevels[0]);

// "x86-64-v3" or "v3" names kLevels' "x86-64-v3".
bool names_level(const std::string& requested, const char* name) {
  const std::string full(name);
  return requested == full || "x86-64-" + requested == full;
}

std::string level_list(const std::vector<std::string>& levels) {
  std::string out;
  for (const std::string& l : levels) out += (out.empty() ? "" : ", ") + l;
  return out;
}

}  // namespace

int cpu_level() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return 4;
  if (__builtin_cpu_supports("x86-64-v3")) return 3;
  if (__builtin_cpu_supports("x86-64-v2")) return 2;
  return 1;
}

CpuTarget select_cpu_target(const std::string& requested, int cpu_level) {
  CpuTarget t;
  std::vector<std::string> built;
  for (const LevelKernels& k : kLevels) {
    built.push_back(k.name);
    if (k.level <= cpu_level) t.available.push_back(k.name);
  }
  if (t.available.empty()) {
    t.problem = "fastiou's CPU kernels need an x86-64 CPU of level " + built.front() +
                " at least (SSE4.2 and POPCNT); this CPU is below it";
    return t;
  }
  if (requested.empty()) {
    t.index = static_cast<int>(t.available.size()) - 1;
  } else {
    for (int i = 0; i < kLevelCount; ++i)
      if (names_level(requested, kLevels[i].name)) t.index = i;
    if (t.index < 0) {
      t.problem = "FASTIOU_CPU_TARGET=" + requested + " names no SIMD level of this fastiou build; it has " +
                  level_list(built) + " (or leave it unset for the best this CPU runs)";
      return t;
    }
    if (t.index >= static_cast<int>(t.available.size())) {
      t.problem = "FASTIOU_CPU_TARGET=" + requested + " names a SIMD level this CPU lacks; it runs " +
                  level_list(t.available);
      t.index = -1;
      return t;
    }
  }
  t.level = kLevels[t.index].name;
  return t;
}

const CpuTarget& cpu_target() {
  static const CpuTarget target = [] {
    const char* requested = std::getenv("FASTIOU_CPU_TARGET");
    return select_cpu_target(requested != nullptr ? requested : "", cpu_level());
  }();
  return target;
}

namespace {

// The kernels run with subnormal floats flushed to zero (MXCSR's FTZ and DAZ
// bits) on every thread that runs them, whichever door called: TensorFlow's
// threads already run so, and a subnormal intermediate (the exp of a very
// negative logit) read as zero on one door and not on another would make the
// doors' bits differ. Each thread's own mode is restored afterwards.
class FlushSubnormals {
 public:
  FlushSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtzDaz); }
  ~FlushSubnormals() { _mm_setcsr(saved_); }
  FlushSubnormals(const FlushSubnormals&) = delete;
  FlushSubnormals& operator=(const FlushSubnormals&) = delete;

 private:
  static constexpr unsigned kFtzDaz = 0x8040;  // FTZ (bit 15) and DAZ (bit 6)
  unsigned saved_;
};

// Runs the `entry` kernel of this process's level on args. A thread whose
// scratch (a few values per channel or class, per thread) cannot be
// allocated turns into an error of the call: no exception leaves a worker
// thread of TensorFlow's or XLA's pool, which would end the process.
template <typename Args>
std::string run_flushed(std::string (*LevelKernels::*entry)(const Args&, const ParallelFor&), const Args& args,
                        const ParallelFor& parallel_for) {
  const CpuTarget& target = cpu_target();
  if (!target.problem.empty()) return target.problem;
  std::atomic<bool> out_of_memory{false};
  const ParallelFor flushed = [&parallel_for, &out_of_memory](int64_t units, int64_t cost,
                                                              const std::function<void(int64_t, int64_t)>& fn) {
    parallel_for(units, cost, [&fn, &out_of_memory](int64_t begin, int64_t end) {
      FlushSubnormals flush;
      try {
        fn(begin, end);
      } catch (const std::bad_alloc&) {
        out_of_memory = true;
      }
    });
  };
  FlushSubnormals flush;  // the calling thread: the final sums and their conversion
  std::string err;
  try {
    err = (kLevels[target.index].*entry)(args, flushed);
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  if (out_of_memory)
    return "out of memory for the kernel's scratch (a few values per channel or class on each thread)";
  return err;
}

}  // namespace

std::string overlap_stats_cpu(const StatsArgs& args, const ParallelFor& parallel_for) {
  const std::string err = validate_label_dtype(args, args.true_dtype);
  if (!err.empty()) return err;
  return run_flushed(&LevelKernels::stats, args, parallel_for);
}

std::string overlap_grad_cpu(const GradArgs& args, const ParallelFor& parallel_for) {
  const std::string err = validate_label_dtype(args, args.true_dtype);
  if (!err.empty()) return err;
  return run_flushed(&LevelKernels::grad, args, parallel_for);
}

std::string confusion_counts_cpu(const ConfusionArgs& args, const ParallelFor& parallel_for) {
  if (std::string problem = confusion_input_problem(args); !problem.empty()) return problem;
  return run_flushed(&LevelKernels::confusion, args, parallel_for);
}

}  // namespace fastiou
