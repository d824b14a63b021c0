// XLA FFI handlers of fastiou's ops: the framework-neutral entry that XLA
// custom calls reach, from TensorFlow (jit_compile) and from JAX (jax.ffi).
//
// Targets (the names XLA custom calls use):
//   fastiou_overlap_stats  args (y_true, y_pred, weights), results (I, P, T)
//   fastiou_overlap_grad   args (y_true, y_pred, weights, dI, dP, dT), result dy
//   fastiou_confusion_counts  args (y_true, y_pred, weights), result counts
//                          [3, num_classes] float64 or float32
// Attributes (csrc/core/overlap_options.h), all of them in every call:
// from_logits, per_image, has_weights, softmax, sparse, has_ignore (booleans,
// MLIR i1), ignore_index (i64), and wrt_true (boolean) for the gradient.
// weights is ignored (any shape, e.g. [0]) unless has_weights. The confusion
// counts take the options of core/confusion.h (threshold an f32, the rules
// and classes i64) on y_true [batch, pixels, channels], y_pred likewise and
// weights [rows, columns].
//
// Host handlers run the C++ kernels on XLA's thread pool with the same fixed
// partition as graph mode, so results equal graph mode bitwise. CUDA handlers
// run the CUDA kernels on XLA's stream without synchronizing; their scratch
// comes from XLA's allocator.
#pragma once

#include "xla/ffi/api/ffi.h"

namespace fastiou_xla {

XLA_FFI_DECLARE_HANDLER_SYMBOL(FastiouOverlapStatsHost);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FastiouOverlapGradHost);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FastiouConfusionCountsHost);
#if FASTIOU_WITH_CUDA
XLA_FFI_DECLARE_HANDLER_SYMBOL(FastiouOverlapStatsCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FastiouOverlapGradCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FastiouConfusionCountsCuda);
#endif

}  // namespace fastiou_xla
