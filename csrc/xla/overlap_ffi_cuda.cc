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

// Scratch of `doubles` doubles for kernels queued on XLA's stream: XLA's
// scratch where the runtime offers it; JAX's GPU client does not, and then it
// comes from the device's stream-ordered pool on XLA's stream, given back on
// that stream (Release) once the kernels are queued.
class StreamScratch {
 public:
  StreamScratch(ffi::ScratchAllocator& scratch, cudaStream_t stream, int64_t doubles, const char* what)
      : stream_(stream) {
    if (doubles <= 0) return;
    const size_t bytes = static_cast<size_t>(doubles) * sizeof(double);
    data_ = scratch.Allocate(bytes, 64).value_or(nullptr);
    own_ = data_ == nullptr;
    if (!own_) return;
    const cudaError_t e = cudaMallocAsync(&data_, bytes, stream);
    if (e != cudaSuccess) {
      cudaGetLastError();
      data_ = nullptr;
      own_ = false;
      error_ = std::string("fastiou: could not allocate the ") + what + " on the GPU: " + cudaGetErrorString(e);
    }
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  ~StreamScratch() { Release(); }

  double* data() const { return static_cast<double*>(data_); }
  // Empty, or why there is no scratch.
  const std::string& error() const { return error_; }
  // Gives the pool's scratch back on the stream; empty, or the problem.
  std::string Release() {
    if (!own_) return std::string();
    own_ = false;
    const cudaError_t e = cudaFreeAsync(data_, stream_);
    return e == cudaSuccess ? std::string() : std::string("cudaFreeAsync: ") + cudaGetErrorString(e);
  }

 private:
  cudaStream_t stream_;
  void* data_ = nullptr;
  bool own_ = false;
  std::string error_;
};

ffi::Error ScratchError(const std::string& message) {
  return ffi::Error(ffi::ErrorCode::kResourceExhausted, message);
}

ffi::Error StatsCuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer y_true,
                     ffi::AnyBuffer y_pred, ffi::AnyBuffer weights, ffi::Result<ffi::AnyBuffer> intersection,
                     ffi::Result<ffi::AnyBuffer> pred_sum, ffi::Result<ffi::AnyBuffer> true_sum,
                     fastiou::OverlapOptions options) {
  if (const std::string d = fastiou::cuda_driver_problem(); !d.empty()) return DriverError(d);
  fastiou::StatsArgs a;
  std::string err = PrepareStats(y_true, y_pred, weights, options, *intersection, *pred_sum, *true_sum, &a);
  if (!err.empty()) return Invalid(err);
  StreamScratch workspace(scratch, stream, fastiou::stats_workspace_doubles_cuda(a), "stats workspace");
  if (!workspace.error().empty()) return ScratchError(workspace.error());
  a.workspace = workspace.data();
  err = fastiou::overlap_stats_cuda(a, stream);
  const std::string released = workspace.Release();
  if (err.empty()) err = released;
  if (!err.empty()) return ffi::Error::Internal("fastiou: " + err);
  return ffi::Error::Success();
}

// The confusion counts into a [3, num_classes] buffer of float64, or of
// float32 (JAX without x64) through float64 scratch, rounded once; the
// kernel's workspace from the same scratch.
ffi::Error ConfusionCuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer y_true,
                         ffi::AnyBuffer y_pred, ffi::AnyBuffer weights, ffi::Result<ffi::AnyBuffer> counts,
                         fastiou::ConfusionOptions options) {
  if (const std::string d = fastiou::cuda_driver_problem(); !d.empty()) return DriverError(d);
  if (const std::string r = fastiou::confusion_determinism_problem(options); !r.empty()) {
    return ffi::Error(ffi::ErrorCode::kUnimplemented, "fastiou: " + r);
  }
  fastiou::ConfusionArgs a;
  bool narrow = false;
  std::string err = PrepareConfusion(y_true, y_pred, weights, *counts, options, &a, &narrow);
  if (!err.empty()) return Invalid(err);
  // The kernel's workspace, then (for float32 counts) the float64 counts.
  const int64_t work = fastiou::confusion_workspace_doubles_cuda(a);
  StreamScratch doubles(scratch, stream, work + (narrow ? 3 * a.num_classes : 0), "confusion counts");
  if (!doubles.error().empty()) return ScratchError(doubles.error());
  a.workspace = doubles.data();
  a.counts = narrow ? doubles.data() + work : static_cast<double*>(counts->untyped_data());
  err = fastiou::confusion_counts_cuda(a, stream, narrow ? static_cast<float*>(counts->untyped_data()) : nullptr);
  const std::string released = doubles.Release();
  if (err.empty()) err = released;
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(FastiouConfusionCountsCuda, ConfusionCuda,
                              BindConfusionOperands(ffi::Ffi::Bind()
                                                        .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                                        .Ctx<ffi::ScratchAllocator>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FastiouOverlapGradCuda, GradCuda,
                              BindGradOperands(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()));

}  // namespace fastiou_xla
