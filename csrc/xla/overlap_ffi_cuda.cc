// CUDA XLA FFI handlers: the CUDA kernels on XLA's stream, scratch from XLA's
// allocator, no synchronization. A sparse label outside [0, C) gives NaN sums
// (see core/overlap_kernels.h): raising would need the stream to finish.
#include <cuda_runtime.h>

#include "xla/overlap_ffi.h"
#include "xla/overlap_ffi_common.h"

namespace fastiou_xla {
namespace {

ffi::Error StatsCuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer y_true,
                     ffi::AnyBuffer y_pred, ffi::AnyBuffer weights, ffi::Result<ffi::AnyBuffer> intersection,
                     ffi::Result<ffi::AnyBuffer> pred_sum, ffi::Result<ffi::AnyBuffer> true_sum,
                     Options options) {
  fastiou::StatsArgs a;
  std::string err = FillInputs(y_true, y_pred, weights, options, &a);
  for (auto [buffer, name] : {std::pair{&intersection, "intersection"}, std::pair{&pred_sum, "pred_sum"},
                              std::pair{&true_sum, "true_sum"}}) {
    if (err.empty()) err = CheckSums(**buffer, name, a);
  }
  if (!err.empty()) return Invalid(err);
  a.intersection = intersection->untyped_data();
  a.pred_sum = pred_sum->untyped_data();
  a.true_sum = true_sum->untyped_data();
  const int64_t doubles = fastiou::stats_workspace_doubles_cuda(a);
  const std::optional<void*> workspace = scratch.Allocate(static_cast<size_t>(doubles) * sizeof(double), 64);
  if (!workspace) return ffi::Error::Internal("fastiou: could not allocate the stats scratch on the GPU");
  a.workspace = static_cast<double*>(*workspace);
  err = fastiou::overlap_stats_cuda(a, stream);
  if (!err.empty()) return ffi::Error::Internal("fastiou: " + err);
  return ffi::Error::Success();
}

ffi::Error GradCuda(cudaStream_t stream, ffi::AnyBuffer y_true, ffi::AnyBuffer y_pred, ffi::AnyBuffer weights,
                    ffi::AnyBuffer grad_i, ffi::AnyBuffer grad_p, ffi::AnyBuffer grad_t,
                    ffi::Result<ffi::AnyBuffer> out, GradOptions options) {
  fastiou::GradArgs a;
  std::string err = FillInputs(y_true, y_pred, weights, options.options(), &a);
  if (err.empty()) err = CheckSums(grad_i, "grad_intersection", a);
  if (err.empty()) err = CheckSums(grad_p, "grad_pred_sum", a);
  if (err.empty()) err = CheckSums(grad_t, "grad_true_sum", a);
  if (err.empty() && (Dims(*out) != Dims(y_pred) || out->element_type() != y_pred.element_type())) {
    err = "the gradient must have y_pred's shape and dtype";
  }
  if (!err.empty()) return Invalid(err);
  a.wrt_true = options.wrt_true != 0;
  a.grad_intersection = grad_i.untyped_data();
  a.grad_pred_sum = grad_p.untyped_data();
  a.grad_true_sum = grad_t.untyped_data();
  a.output = out->untyped_data();
  err = fastiou::overlap_grad_cuda(a, stream);
  if (!err.empty()) return ffi::Error::Internal("fastiou: " + err);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FastiouOverlapStatsCuda, StatsCuda,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attrs<Options>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FastiouOverlapGradCuda, GradCuda,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attrs<GradOptions>());

}  // namespace fastiou_xla
