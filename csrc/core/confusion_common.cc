// The checks of the confusion counts (core/confusion.h) every door runs
// before the kernels, and their chunking.
#include <algorithm>
#include <cstdint>
#include <string>

#include "core/confusion.h"

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

int64_t confusion_workspace_doubles(const ConfusionArgs& a) {
  return a.geometry().chunks() * 3 * a.num_classes;
}

}  // namespace fastiou
