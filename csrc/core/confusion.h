// The confusion counts of fastiou's IoU metrics (fastiou.metrics), defined
// once for every door.
//
// For each class k the kernels add, over the pixels, the weight of those
//   whose target class is k and whose predicted class is k too  (tp[k]),
//   whose target class is k                                      (true[k]),
//   whose predicted class is k                                   (pred[k]),
// which is all an IoU or Dice score needs: IoU_k = tp / (true + pred - tp).
// A pixel's classes come from its stored values by the rules (ClassRule;
// core/confusion_math.h holds them as host/device functions) inside the
// kernel's one pass: no thresholded, argmaxed or one-hot copy of a mask exists.
// A pixel counts nowhere when either class lies outside [0, num_classes) or
// its target class is ignore_class, as Keras' IoU metrics treat them.
//
// Inputs are seen as y_true [batch, pixels, true channels], y_pred [batch,
// pixels, pred channels] and weights [weight rows, weight columns], where the
// rows are 1 (one weight for every image) or batch, and the columns 1 (one
// weight per image) or pixels.
#pragma once

#include <cstdint>
#include <string>

#include "core/overlap_kernels.h"

// The options of the confusion-count op, in the order of its attributes.
// X(type, name, default, kind) as FASTIOU_OVERLAP_OPTIONS (overlap_options.h),
// type bool, int64_t or float.
//   num_classes  the classes counted; classes outside [0, num_classes) count nowhere.
//   pred_rule    how y_pred gives a class (ClassRule).
//   true_rule    how y_true gives a class (ClassRule; kThreshold is not one).
//   threshold    kThreshold: class 1 where the prediction, read as float32,
//                is >= threshold (a logit threshold for logits), else 0.
//   has_weights  the weights input holds weights; else every weight is 1.
//   integer_weights  weights are truncated to integers first (a metric of
//                an integer dtype, as Keras casts them).
//   has_ignore, ignore_class  pixels whose target class is ignore_class count
//                nowhere.
//   deterministic  the caller requires counts that are bitwise the same on
//                every run: the CUDA doors refuse those that are not
//                (confusion_determinism_problem); the C++ kernel always is.
#define FASTIOU_CONFUSION_OPTIONS(X)        \
  X(int64_t, num_classes, 2, setting)       \
  X(int64_t, pred_rule, 0, setting)         \
  X(int64_t, true_rule, 0, setting)         \
  X(float, threshold, 0.5, setting)         \
  X(bool, has_weights, false, flag)         \
  X(bool, integer_weights, false, setting)  \
  X(bool, has_ignore, false, flag)          \
  X(int64_t, ignore_class, 0, optional)     \
  X(bool, deterministic, false, setting)

namespace fastiou {

// How a pixel's stored values give its class.
enum class ClassRule : int64_t {
  kIndex = 0,      // one value per pixel holding the class index (floats truncated toward zero)
  kArgmax = 1,     // the channel of the largest value, the first one on ties
  kThreshold = 2,  // one value per pixel: 1 where it is >= threshold, else 0 (y_pred only)
};

struct ConfusionOptions {
  FASTIOU_CONFUSION_OPTIONS(FASTIOU_OPTION_MEMBER)
};

struct ConfusionArgs : ConfusionOptions {
  int64_t batch = 0;
  int64_t pixels = 0;         // per image
  int64_t true_channels = 1;  // 1 for kIndex
  int64_t pred_channels = 1;  // 1 for kIndex and kThreshold
  int64_t weight_rows = 1;    // 1 or batch
  int64_t weight_cols = 1;    // 1 or pixels
  DType true_dtype = DType::kInt32;
  DType pred_dtype = DType::kFloat32;
  DType weight_dtype = DType::kFloat32;  // float32 or float64
  const void* y_true = nullptr;
  const void* y_pred = nullptr;
  const void* weights = nullptr;  // read only with has_weights
  // Output: tp[num_classes], then true[num_classes], then pred[num_classes].
  double* counts = nullptr;
  // Caller-provided scratch: confusion_workspace_doubles() doubles for the C++
  // kernel, confusion_workspace_doubles_cuda() of device memory for the CUDA one.
  double* workspace = nullptr;

  // The chunking of the pixels: OverlapGeometry's over the wider input, with
  // chunks of 8 * num_classes pixels at least (confusion_common.cc).
  OverlapGeometry geometry() const;
};

// The CUDA kernel adds fractional weights in a fixed order up to this many
// classes (its per-warp histograms fill 48 KiB of shared memory there), and
// with atomics past it.
constexpr int64_t kCudaOrderedClasses = 256;

// Whether the CUDA kernel adds these counts' fractional weights in a fixed
// order (count_pixels_ordered in csrc/cuda/confusion.cu).
inline bool confusion_cuda_fixed_order(const ConfusionOptions& o) {
  return o.has_weights && !o.integer_weights && o.num_classes <= kCudaOrderedClasses;
}

// Whether the CUDA kernel's counts are bitwise the same on every run: sums of
// unit or integer weights are exact whatever their order, and fractional
// weights up to kCudaOrderedClasses classes are added in a fixed order.
inline bool confusion_cuda_repeatable(const ConfusionOptions& o) {
  return !o.has_weights || o.integer_weights || confusion_cuda_fixed_order(o);
}

// Why the CUDA kernel does not run these counts: o.deterministic and counts
// that are not confusion_cuda_repeatable. Empty where it runs. Every CUDA
// door asks this first and raises its own kind of "unimplemented" error with
// the message: the TensorFlow op (o.deterministic also under TensorFlow's op
// determinism), the XLA handler (o.deterministic from TensorFlow's op
// determinism or XLA's flags, fastiou.metrics) and fastiou.kernels, whose
// by_pixel counts, the CUDA kernel's steps on the host, ask it as well.
std::string confusion_determinism_problem(const ConfusionOptions& o);

// Checks the shapes (as [batch, pixels, channels] for y_true and y_pred,
// [rows, columns] for the weights), the rules against them and the options,
// and fills the geometry fields of args. Empty, or the problem.
std::string validate_confusion(const Shape& tru, const Shape& pred, const Shape& weights, ConfusionArgs* args);

int64_t confusion_workspace_doubles(const ConfusionArgs& args);

// Inputs no kernel reads: weights other than float32 and float64, or rules
// and stored types outside confusion_reads (core/confusion_math.h). Every
// kernel checks this first. Empty, or the problem.
std::string confusion_input_problem(const ConfusionArgs& args);

// Every pixel's share (confusion_pixel, core/confusion_math.h) added one
// pixel at a time on one thread, in pixel order: the CUDA kernel's per-pixel
// steps on the host, for tests. Empty, or an unsupported input.
std::string confusion_counts_by_pixel(const ConfusionArgs& args);

// The CUDA kernel (csrc/cuda/confusion.cu) on `stream` (a cudaStream_t):
// counts of unit or integer weights are exact, so the same on every run;
// fractional weights are added in a fixed order up to kCudaOrderedClasses
// classes (bitwise the same on every run) and by atomics past that (then they
// can differ in the last bits between runs: confusion_cuda_repeatable). With
// `narrow`, the counts are also written there as float32 (3 * num_classes
// values) once complete. args.workspace:
// device memory of confusion_workspace_doubles_cuda(args) doubles (none
// without fractional weights). Empty, or the problem.
std::string confusion_counts_cuda(const ConfusionArgs& args, void* stream, float* narrow = nullptr);
int64_t confusion_workspace_doubles_cuda(const ConfusionArgs& args);

// The C++ kernel (csrc/cpu/confusion_cpu.cc, one copy per SIMD level as the
// loss kernels, run by csrc/cpu/cpu_dispatch.cc). Deterministic: chunks
// fixed by the shape, added in order. Empty, or an unsupported dtype.
std::string confusion_counts_cpu(const ConfusionArgs& args, const ParallelFor& parallel_for);

}  // namespace fastiou
