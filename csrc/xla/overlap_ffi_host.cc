// Host (CPU) XLA FFI handlers: the C++ kernels on XLA's thread pool.
#include <algorithm>
#include <condition_variable>
#include <mutex>

#include "xla/overlap_ffi.h"
#include "xla/overlap_ffi_common.h"

namespace fastiou_xla {
namespace {

// Runs fn over [0, units) in up to num_threads pieces, one on the calling
// thread and the rest on XLA's pool, and waits for them. The kernels' results
// do not depend on the split.
fastiou::ParallelFor PoolParallelFor(ffi::ThreadPool* pool) {
  return [pool](int64_t units, int64_t cost, const std::function<void(int64_t, int64_t)>& fn) {
    if (units <= 0) return;
    const int64_t threads = std::max<int64_t>(1, pool->num_threads());
    // Below about a million cycles of work a piece is not worth a task.
    const int64_t by_cost = std::max<int64_t>(1, units * std::max<int64_t>(cost, 1) / 1000000);
    const int64_t n = std::min({threads, units, by_cost});
    if (n == 1) {
      fn(0, units);
      return;
    }
    std::mutex mu;
    std::condition_variable done;
    int64_t pending = n - 1;
    for (int64_t k = 1; k < n; ++k) {
      pool->Schedule([&, k] {
        fn(units * k / n, units * (k + 1) / n);
        std::lock_guard<std::mutex> lock(mu);
        if (--pending == 0) done.notify_one();
      });
    }
    fn(0, units / n);
    std::unique_lock<std::mutex> lock(mu);
    done.wait(lock, [&] { return pending == 0; });
  };
}

ffi::Error StatsHost(ffi::ThreadPool pool, ffi::AnyBuffer y_true, ffi::AnyBuffer y_pred, ffi::AnyBuffer weights,
                     ffi::Result<ffi::AnyBuffer> intersection, ffi::Result<ffi::AnyBuffer> pred_sum,
                     ffi::Result<ffi::AnyBuffer> true_sum, Options options) {
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
                    ffi::Result<ffi::AnyBuffer> out, GradOptions options) {
  fastiou::GradArgs a;
  std::string err = PrepareGrad(y_true, y_pred, weights, grad_i, grad_p, grad_t, options, *out, &a);
  if (!err.empty()) return Invalid(err);
  err = fastiou::overlap_grad_cpu(a, PoolParallelFor(&pool));
  if (!err.empty()) return Invalid(err);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FastiouOverlapStatsHost, StatsHost,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attrs<Options>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FastiouOverlapGradHost, GradHost,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attrs<GradOptions>());

}  // namespace fastiou_xla
