// The checks of the confusion counts (core/confusion.h) every door runs
// before the kernels, and their chunking.
#include <algorithm>
#include <cstdint>
#include <string>

#include "core/confusion.h"
#include "core/confusion_math.h"

namespace fastiou {

OverlapGeometry ConfusionArgs::geometry() const {
  OverlapGeometry g;
  g.batch = batch;
  g.pixels = pixels;
  // Chunks of kChunkElements values of the wider input, but of 8 pixels per
  // counter at least, so that zeroing and adding a chunk's 3 * num_classes
  // counts stays small next to its pixels (and the workspace, 3 * num_classes
  // doubles a chunk, smaller than the inputs).
  const int64_t widest = std::max<int64_t>(1, std::max(true_channels, pred_channels));
  g.channels = std::max<int64_t>(1, std::min(widest, kChunkElements / std::max<int64_t>(1, 8 * num_classes)));
  return g;
}

std::string validate_confusion(const Shape& tru, const Shape& pred, const Shape& weights, ConfusionArgs* a) {
  if (tru.size() != 3 || pred.size() != 3) {
    return "y_true and y_pred must be seen as [batch, pixels, channels], got " + shape_string(tru) + " and " +
           shape_string(pred);
  }
  for (const Shape* s : {&tru, &pred, &weights})
    for (int64_t d : *s)
      if (d < 0) return "shape " + shape_string(*s) + " has a negative dimension";
  if (tru[0] != pred[0] || tru[1] != pred[1]) {
    return "y_true " + shape_string(tru) + " and y_pred " + shape_string(pred) +
           " must have the same batch and pixels";
  }
  if (a->num_classes < 1 || a->num_classes > kMaxChannels) {
    return "num_classes must lie in [1, " + std::to_string(kMaxChannels) + "], got " +
           std::to_string(a->num_classes);
  }
  const auto rule_ok = [](int64_t r, bool threshold_allowed) {
    return r == int64_t(ClassRule::kIndex) || r == int64_t(ClassRule::kArgmax) ||
           (threshold_allowed && r == int64_t(ClassRule::kThreshold));
  };
  if (!rule_ok(a->pred_rule, true) || !rule_ok(a->true_rule, false)) {
    return "pred_rule must be 0, 1 or 2 and true_rule 0 or 1, got " + std::to_string(a->pred_rule) + " and " +
           std::to_string(a->true_rule);
  }
  if (a->pred_rule != int64_t(ClassRule::kArgmax) && pred[2] != 1) {
    return "y_pred " + shape_string(pred) + " must have one value per pixel for a class index or a threshold";
  }
  if (a->true_rule != int64_t(ClassRule::kArgmax) && tru[2] != 1) {
    return "y_true " + shape_string(tru) + " must have one value per pixel for a class index";
  }
  if ((tru[2] == 0 || pred[2] == 0) && tru[1] > 0 && tru[0] > 0) {
    return "y_true " + shape_string(tru) + " and y_pred " + shape_string(pred) + " need at least one channel";
  }
  if (pred[2] > kMaxChannels || tru[2] > kMaxChannels) {
    return "at most " + std::to_string(kMaxChannels) + " channels are supported";
  }
  if (a->has_weights) {
    if (weights.size() != 2 || (weights[0] != 1 && weights[0] != pred[0]) ||
        (weights[1] != 1 && weights[1] != pred[1])) {
      return "weights must be seen as [1 or batch, 1 or pixels] = [1 or " + std::to_string(pred[0]) + ", 1 or " +
             std::to_string(pred[1]) + "], got " + shape_string(weights);
    }
    a->weight_rows = weights[0];
    a->weight_cols = weights[1];
  } else {
    a->weight_rows = a->weight_cols = 1;
  }
  a->batch = pred[0];
  a->pixels = pred[1];
  a->true_channels = tru[2];
  a->pred_channels = pred[2];
  return std::string();
}

namespace {

const char* rule_name(int64_t rule) {
  switch (static_cast<ClassRule>(rule)) {
    case ClassRule::kIndex: return "class index";
    case ClassRule::kArgmax: return "argmax";
    case ClassRule::kThreshold: return "threshold";
  }
  return "unknown";
}

std::string unsupported_confusion_inputs(const ConfusionArgs& a) {
  return std::string("unsupported confusion inputs: y_true ") + dtype_name(a.true_dtype) + " by the " +
         rule_name(a.true_rule) + " rule, y_pred " + dtype_name(a.pred_dtype) + " by the " + rule_name(a.pred_rule) +
         " rule";
}

}  // namespace

std::string confusion_determinism_problem(const ConfusionOptions& o) {
  if (!o.deterministic || confusion_cuda_repeatable(o)) return std::string();
  return "the GPU confusion counts of fractional sample weights over more than " +
         std::to_string(kCudaOrderedClasses) + " classes (here " + std::to_string(o.num_classes) +
         ") are added by atomics and can differ in the last bits between runs, so they do not run where "
         "determinism is required (TensorFlow's op determinism, XLA's --xla_gpu_exclude_nondeterministic_ops or "
         "--xla_gpu_deterministic_ops, or deterministic=True); use integer or no sample weights, at most " +
         std::to_string(kCudaOrderedClasses) + " classes, or place the metric on the CPU";
}

std::string confusion_input_problem(const ConfusionArgs& a) {
  if (a.has_weights && a.weight_dtype != DType::kFloat32 && a.weight_dtype != DType::kFloat64)
    return std::string("weights must be float32 or float64, got ") + dtype_name(a.weight_dtype);
  if (!dispatch_confusion(a, [](auto, auto, auto, auto) {})) return unsupported_confusion_inputs(a);
  return std::string();
}

std::string confusion_counts_by_pixel(const ConfusionArgs& a) {
  if (std::string problem = confusion_input_problem(a); !problem.empty()) return problem;
  const int64_t K = a.num_classes;
  for (int64_t j = 0; j < 3 * K; ++j) a.counts[j] = 0.0;
  const bool ran = dispatch_confusion(a, [&](auto true_rule, auto pred_rule, auto tt, auto pt) {
    for (int64_t flat = 0; flat < a.batch * a.pixels; ++flat) {
      const PixelCount c =
          confusion_pixel<decltype(true_rule)::value, decltype(pred_rule)::value, decltype(tt), decltype(pt)>(a, flat);
      if (!c.counted) continue;
      if (c.t == c.p) a.counts[c.t] += c.w;
      a.counts[K + c.t] += c.w;
      a.counts[2 * K + c.p] += c.w;
    }
  });
  return ran ? std::string() : confusion_input_problem(a);
}

int64_t confusion_workspace_doubles(const ConfusionArgs& a) {
  return a.geometry().chunks() * 3 * a.num_classes;
}

}  // namespace fastiou
