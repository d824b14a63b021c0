#include "python/machine.h"

#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "core/overlap_kernels.h"
#include "python/dlpack.h"

#if FASTIOU_WITH_FFI
#include "xla/overlap_ffi.h"
#endif

namespace fastiou_py {

int cuda_device_count() {
#if FASTIOU_WITH_CUDA
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    forget_cuda_error(err);
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

std::string cuda_driver_problem() {
#if FASTIOU_WITH_CUDA
  return fastiou::cuda_driver_problem();
#else
  return "fastiou was built without CUDA kernels";
#endif
}

void require_cuda_kernels(int device) {
#if FASTIOU_WITH_CUDA
  const std::string problem = fastiou::cuda_driver_problem();
  if (!problem.empty()) throw std::runtime_error("fastiou: " + problem);
  const int n = cuda_device_count();
  if (n == 0) {
    throw std::runtime_error("fastiou: no CUDA device visible to fastiou's kernels (y_pred is on CUDA device " +
                             std::to_string(device) + ")");
  }
  if (device < 0 || device >= n) {
    throw std::runtime_error("fastiou: y_pred is on CUDA device " + std::to_string(device) +
                             ", but fastiou's kernels see " + std::to_string(n) + " CUDA devices");
  }
#else
  (void)device;
  throw py::value_error("fastiou: y_pred is a CUDA array, but fastiou was built without CUDA kernels "
                        "(fastiou.built_with_cuda() is False)");
#endif
}

int64_t cuda_pool_used(int device, bool reset_high) {
#if FASTIOU_WITH_CUDA
  cudaMemPool_t pool = memory_pool(device);
  unsigned long long used = 0;
  check_cuda(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used), "cudaMemPoolGetAttribute");
  if (reset_high) {
    unsigned long long zero = 0;
    check_cuda(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero), "cudaMemPoolSetAttribute");
  }
  return static_cast<int64_t>(used);
#else
  (void)device;
  (void)reset_high;
  return 0;
#endif
}

int64_t cuda_pool_used_high(int device) {
#if FASTIOU_WITH_CUDA
  cudaMemPool_t pool = memory_pool(device);
  unsigned long long high = 0;
  check_cuda(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high), "cudaMemPoolGetAttribute");
  return static_cast<int64_t>(high);
#else
  (void)device;
  return 0;
#endif
}

// For jax.ffi.register_ffi_target(name, capsule, platform=...).
py::dict ffi_handlers() {
  py::dict targets;
#if FASTIOU_WITH_FFI
  py::dict stats, grad, confusion;
  stats["cpu"] = py::capsule(reinterpret_cast<void*>(&fastiou_xla::FastiouOverlapStatsHost));
  grad["cpu"] = py::capsule(reinterpret_cast<void*>(&fastiou_xla::FastiouOverlapGradHost));
  confusion["cpu"] = py::capsule(reinterpret_cast<void*>(&fastiou_xla::FastiouConfusionCountsHost));
#if FASTIOU_WITH_CUDA
  stats["cuda"] = py::capsule(reinterpret_cast<void*>(&fastiou_xla::FastiouOverlapStatsCuda));
  grad["cuda"] = py::capsule(reinterpret_cast<void*>(&fastiou_xla::FastiouOverlapGradCuda));
  confusion["cuda"] = py::capsule(reinterpret_cast<void*>(&fastiou_xla::FastiouConfusionCountsCuda));
#endif
  targets["fastiou_overlap_stats"] = stats;
  targets["fastiou_overlap_grad"] = grad;
  targets["fastiou_confusion_counts"] = confusion;
#endif
  return targets;
}

namespace {

py::tuple target_tuple(const fastiou::CpuTarget& t) {
  return py::make_tuple(t.level, t.available, t.problem);
}

}  // namespace

py::tuple cpu_target_tuple() { return target_tuple(fastiou::cpu_target()); }

py::tuple select_cpu_target_tuple(const std::string& requested, int cpu_level) {
  return target_tuple(fastiou::select_cpu_target(requested, cpu_level));
}

}  // namespace fastiou_py
