// Host (CPU) XLA FFI handlers: the C++ kernels on XLA's thread pool.
#include <functional>
#include <utility>
#include <vector>

#include "core/confusion.h"

#include "xla/overlap_ffi.h"
#include "xla/overlap_ffi_common.h"

FASTIOU_FFI_DECODE(fastiou::ConfusionOptions, FASTIOU_CONFUSION_OPTIONS(FASTIOU_FFI_MEMBER));

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
  static_cast<fastiou::ConfusionOptions&>(a) = options;
  std::string err = fastiou::validate_confusion(Dims(y_true), Dims(y_pred), Dims(weights), &a);
  if (!err.empty()) return Invalid(err);
  const auto td = ToDType(y_true.element_type());
  const auto pd = ToDType(y_pred.element_type());
  const auto wd = ToDType(weights.element_type());
  // The kernel refuses weights of a type it does not read (confusion_counts_cpu).
  if (!td || !pd || !wd) return Invalid("y_true, y_pred and weights must be bool, uint8, int32, int64 or a float type");
  const fastiou::Shape want{3, a.num_classes};
  const ffi::DataType out_type = counts->element_type();
  if (Dims(*counts) != want || (out_type != ffi::DataType::F64 && out_type != ffi::DataType::F32)) {
    return Invalid("counts must be float64 or float32 of shape " + fastiou::shape_string(want));
  }
  a.true_dtype = *td;
  a.pred_dtype = *pd;
  a.weight_dtype = *wd;
  a.y_true = y_true.untyped_data();
  a.y_pred = y_pred.untyped_data();
  a.weights = weights.untyped_data();
  std::vector<double> workspace(static_cast<size_t>(fastiou::confusion_workspace_doubles(a)));
  std::vector<double> wide(out_type == ffi::DataType::F32 ? static_cast<size_t>(3 * a.num_classes) : 0);
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
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attrs<fastiou::ConfusionOptions>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FastiouOverlapStatsHost, StatsHost,
                              BindStatsOperands(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FastiouOverlapGradHost, GradHost,
                              BindGradOperands(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));

}  // namespace fastiou_xla
