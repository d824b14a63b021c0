// Host (CPU) XLA FFI handlers: the C++ kernels on XLA's thread pool.
#include <functional>
#include <utility>
#include <vector>

#include "xla/overlap_ffi.h"
#include "xla/overlap_ffi_common.h"

namespace fastiou_xla {
namespace {

// The kernels on XLA's pool: pieces on its threads and the calling one.
fastiou::ParallelFor PoolParallelFor(ffi::ThreadPool* pool) {
  return fastiou::spawning_parallel_for(pool->num_threads(),
                                        [pool](std::function<void()> task) { pool->Schedule(std::move(task)); });
}

ffi::Error StatsHost(ffi::ThreadPool pool, ffi::AnyBuffer y_true, ffi::AnyBuffer y_pred, ffi::AnyBuffer weights,
                     ffi::Result<ffi::AnyBuffer> intersection, ffi::Result<ffi::AnyBuffer> pred_sum,
                     ffi::Result<ffi::AnyBuffer> true_sum, fastiou::OverlapOptions options) {
  fastiou::StatsArgs a;
  std::string err = PrepareStats(y_true, y_pred, weights, options, *intersection, *pred_sum, *true_sum, &a);
  if (!err.empty()) return Invalid(err);
  std::vector<double> workspace(static_cast<size_t>(fastiou::stats_workspace_doubles(a.geometry)));
  a.workspace = workspace.data();
  err = fastiou::overlap_stats_cpu(a, PoolParallelFor(&pool));
  if (!err.empty()) return Invalid(err);
  return ffi::Error::Success();
}

ffi::Error GradHost(ffi::ThreadPool pool, ffi::AnyBuffer y_true, ffi::AnyBuffer y_pred, ffi::AnyBuffer weights,
                    ffi::AnyBuffer grad_i, ffi::AnyBuffer grad_p, ffi::AnyBuffer grad_t,
                    ffi::Result<ffi::AnyBuffer> out, fastiou::GradOptions options) {
  fastiou::GradArgs a;
  std::string err = PrepareGrad(y_true, y_pred, weights, grad_i, grad_p, grad_t, options, *out, &a);
  if (!err.empty()) return Invalid(err);
  err = fastiou::overlap_grad_cpu(a, PoolParallelFor(&pool));
  if (!err.empty()) return Invalid(err);
  return ffi::Error::Success();
}

// The confusion counts of a batch into a [3, num_classes] buffer of float64
// (TensorFlow) or float32 (JAX without x64: the float64 counts rounded once).
ffi::Error ConfusionHost(ffi::ThreadPool pool, ffi::AnyBuffer y_true, ffi::AnyBuffer y_pred, ffi::AnyBuffer weights,
                         ffi::Result<ffi::AnyBuffer> counts, fastiou::ConfusionOptions options) {
  fastiou::ConfusionArgs a;
  bool narrow_counts = false;
  std::string err = PrepareConfusion(y_true, y_pred, weights, *counts, options, &a, &narrow_counts);
  if (!err.empty()) return Invalid(err);
  std::vector<double> workspace(static_cast<size_t>(fastiou::confusion_workspace_doubles(a)));
  std::vector<double> wide(narrow_counts ? static_cast<size_t>(3 * a.num_classes) : 0);
  a.workspace = workspace.data();
  a.counts = wide.empty() ? static_cast<double*>(counts->untyped_data()) : wide.data();
  err = fastiou::confusion_counts_cpu(a, PoolParallelFor(&pool));
  if (!err.empty()) return Invalid(err);
  float* narrow = wide.empty() ? nullptr : static_cast<float*>(counts->untyped_data());
  for (size_t i = 0; i < wide.size(); ++i) narrow[i] = static_cast<float>(wide[i]);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FastiouConfusionCountsHost, ConfusionHost,
                              BindConfusionOperands(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FastiouOverlapStatsHost, StatsHost,
                              BindStatsOperands(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FastiouOverlapGradHost, GradHost,
                              BindGradOperands(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));

}  // namespace fastiou_xla
