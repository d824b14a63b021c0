// CUDA XLA FFI handlers: the CUDA kernels on XLA's stream, scratch from XLA's
// allocator, no synchronization. A value the range guards refuse (a sparse
// label outside [0, C), a target or probability outside [0, 1]) gives NaN
// sums (see core/overlap_kernels.h): raising would need the stream to finish.
#include <cuda_runtime.h>

#include "xla/overlap_ffi.h"
#include "xla/overlap_ffi_common.h"

namespace fastiou_xla {
namespace {

// A driver too old for the kernels: the same message at every door.
ffi::Error DriverError(const std::string& problem) {
  return ffi::Error(ffi::ErrorCode::kFailedPrecondition, "fastiou: " + problem);
}

ffi::Error StatsCuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer y_true,
                     ffi::AnyBuffer y_pred, ffi::AnyBuffer weights, ffi::Result<ffi::AnyBuffer> intersection,
                     ffi::Result<ffi::AnyBuffer> pred_sum, ffi::Result<ffi::AnyBuffer> true_sum,
                     fastiou::OverlapOptions options) {
  if (const std::string d = fastiou::cuda_driver_problem(); !d.empty()) return DriverError(d);
  fastiou::StatsArgs a;
  std::string err = PrepareStats(y_true, y_pred, weights, options, *intersection, *pred_sum, *true_sum, &a);
  if (!err.empty()) return Invalid(err);
  const size_t bytes = static_cast<size_t>(fastiou::stats_workspace_doubles_cuda(a)) * sizeof(double);
  // XLA's scratch where the runtime offers it; JAX's GPU client does not, and
  // then the workspace comes from the device's stream-ordered pool on XLA's
  // stream, given back on that stream once the kernels are queued.
  void* workspace = scratch.Allocate(bytes, 64).value_or(nullptr);
  const bool own = workspace == nullptr;
  if (own) {
    const cudaError_t e = cudaMallocAsync(&workspace, bytes, stream);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                        std::string("fastiou: could not allocate the stats workspace on the GPU: ") +
                            cudaGetErrorString(e));
    }
  }
  a.workspace = static_cast<double*>(workspace);
  err = fastiou::overlap_stats_cuda(a, stream);
  if (own) {
    const cudaError_t e = cudaFreeAsync(workspace, stream);
    if (e != cudaSuccess && err.empty()) err = std::string("cudaFreeAsync: ") + cudaGetErrorString(e);
  }
  if (!err.empty()) return ffi::Error::Internal("fastiou: " + err);
  return ffi::Error::Success();
}

ffi::Error GradCuda(cudaStream_t stream, ffi::AnyBuffer y_true, ffi::AnyBuffer y_pred, ffi::AnyBuffer weights,
                    ffi::AnyBuffer grad_i, ffi::AnyBuffer grad_p, ffi::AnyBuffer grad_t,
                    ffi::Result<ffi::AnyBuffer> out, fastiou::GradOptions options) {
  if (const std::string d = fastiou::cuda_driver_problem(); !d.empty()) return DriverError(d);
  fastiou::GradArgs a;
  std::string err = PrepareGrad(y_true, y_pred, weights, grad_i, grad_p, grad_t, options, *out, &a);
  if (!err.empty()) return Invalid(err);
  err = fastiou::overlap_grad_cuda(a, stream);
  if (!err.empty()) return ffi::Error::Internal("fastiou: " + err);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FastiouOverlapStatsCuda, StatsCuda,
                              BindStatsOperands(ffi::Ffi::Bind()
                                                    .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                                    .Ctx<ffi::ScratchAllocator>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FastiouOverlapGradCuda, GradCuda,
                              BindGradOperands(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()));

}  // namespace fastiou_xla
