#include <algorithm>
#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <condition_variable>
#include <mutex>

#include "core/overlap_kernels.h"

namespace fastiou {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kBool: return "bool";
    case DType::kUInt8: return "uint8";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
  }
  return "unknown";
}

int64_t OverlapGeometry::chunk_pixels() const {
  return std::max<int64_t>(1, kChunkElements / std::max<int64_t>(1, channels));
}

int64_t OverlapGeometry::chunks_per_image() const {
  const int64_t cp = chunk_pixels();
  return (pixels + cp - 1) / cp;
}

int64_t stats_workspace_doubles(const OverlapGeometry& geometry) {
  return geometry.chunks() * geometry.channels * 3;
}

std::string shape_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string validate_overlap_shapes(const Shape& pred, const Shape& tru, const Shape* weights,
                                    const OverlapOptions& options, OverlapGeometry* g) {
  if (pred.size() < 2) {
    return "y_pred must have rank >= 2 (batch, ..., channels), got shape " + shape_string(pred);
  }
  for (int64_t d : pred) {
    if (d < 0) return "y_pred shape " + shape_string(pred) + " has a negative dimension";
  }
  // Channel indices are compared as 32-bit integers in the kernels.
  if (pred.back() > kMaxChannels) {
    return "y_pred shape " + shape_string(pred) + " has " + std::to_string(pred.back()) +
           " channels; fastiou supports at most " + std::to_string(kMaxChannels);
  }
  Shape per_pixel = pred;
  per_pixel.back() = 1;
  if (options.sparse) {
    const Shape no_channel(pred.begin(), pred.end() - 1);
    if (tru != no_channel && tru != per_pixel) {
      return "sparse y_true shape " + shape_string(tru) + " must be " + shape_string(no_channel) +
             " or " + shape_string(per_pixel) + " for y_pred shape " + shape_string(pred);
    }
  } else if (tru != pred) {
    return "y_true shape " + shape_string(tru) + " does not match y_pred shape " +
           shape_string(pred);
  }
  g->batch = pred.front();
  g->channels = pred.back();
  g->pixels = 1;
  for (size_t d = 1; d + 1 < pred.size(); ++d) g->pixels *= pred[d];
  g->weights_per_pixel = false;
  if (weights) {
    if (*weights != pred && *weights != per_pixel) {
      return "weights shape " + shape_string(*weights) + " must equal y_pred shape " +
             shape_string(pred) + " or " + shape_string(per_pixel);
    }
    g->weights_per_pixel = *weights != pred;
  }
  return std::string();
}

std::string validate_label_dtype(const OverlapOptions& options, DType true_dtype) {
  if (!options.sparse) return std::string();
  if (true_dtype == DType::kUInt8 || true_dtype == DType::kInt32 || true_dtype == DType::kInt64) {
    return std::string();
  }
  return std::string("sparse labels (class indices) must be uint8, int32 or int64, got ") +
         dtype_name(true_dtype);
}

namespace {
// A stored value as printed in an error: integers without a fraction.
std::string value_string(double v) {
  if (std::isfinite(v) && std::abs(v) < 1e15 && v == static_cast<double>(static_cast<int64_t>(v))) {
    return std::to_string(static_cast<int64_t>(v));
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}
}  // namespace

std::string bad_input_message(const OverlapInputs& in, int64_t image, const BadInput& bad) {
  const std::string where = " at batch index " + std::to_string(image) + ", pixel " + std::to_string(bad.pixel) +
                            " (flat index over the spatial axes)";
  const std::string channel = in.geometry.channels > 1 ? ", channel " + std::to_string(bad.channel) : "";
  switch (bad.problem) {
    case InputProblem::kLabel: {
      std::string s = "label " + std::to_string(bad.label) + where + " is outside [0, " +
                      std::to_string(in.geometry.channels) + ")";
      if (in.has_ignore) s += " and is not ignore_index " + std::to_string(in.ignore_index);
      return s;
    }
    case InputProblem::kTarget:
      return "y_true holds " + value_string(bad.value) + where + channel +
             ", outside [0, 1]: targets are foreground probabilities (0 or 1 for a mask). Masks stored as "
             "0/255 (as PNG masks are) must be divided by 255 or cast to bool";
    case InputProblem::kProbability:
      return "y_pred holds " + value_string(bad.value) + where + channel +
             ", outside [0, 1], with from_logits=False: if y_pred holds logits (scores before the sigmoid "
             "or softmax, as a model without a final activation gives), pass from_logits=True";
    case InputProblem::kNone:
      return std::string();
  }
  // A record whose problem was not filled in: still an error.
  return "a target or probability" + where + channel + " is outside [0, 1]";
}

bool is_bad_input_message(const std::string& message) {
  for (const char* start : {"label ", "y_true holds ", "y_pred holds ", "a target or probability "}) {
    if (message.rfind(start, 0) == 0) return true;
  }
  return false;
}

std::string cuda_record_message(const OverlapInputs& in, const CudaInputRecord& record) {
  const int64_t pixels = std::max<int64_t>(1, in.geometry.pixels);
  const int64_t channels = std::max<int64_t>(1, in.geometry.channels);
  if (record.flat_pixel >= 0) {
    return bad_label_message(in, record.flat_pixel / pixels, record.flat_pixel % pixels, record.label);
  }
  if (record.flat_element < 0) return std::string();
  const int64_t flat_pixel = record.flat_element / channels;
  InputProblem problem = static_cast<InputProblem>(record.problem);
  // Never left unfilled by the kernels; should it be, the fallback message.
  if (problem != InputProblem::kTarget && problem != InputProblem::kProbability) problem = static_cast<InputProblem>(-1);
  const BadInput bad{problem, flat_pixel % pixels, record.flat_element % channels, 0, record.value};
  return bad_input_message(in, flat_pixel / pixels, bad);
}

std::string bad_label_message(const OverlapInputs& in, int64_t image, int64_t pixel, int64_t value) {
  return bad_input_message(in, image, BadInput{InputProblem::kLabel, pixel, 0, value, 0.0});
}

bool built_with_cuda() {
#if defined(FASTIOU_WITH_CUDA) && FASTIOU_WITH_CUDA
  return true;
#else
  return false;
#endif
}

ParallelFor serial_parallel_for() {
  return [](int64_t units, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    if (units > 0) fn(0, units);
  };
}

ParallelFor spawning_parallel_for(int64_t threads, Spawn spawn) {
  threads = std::max<int64_t>(1, threads);
  return [threads, spawn = std::move(spawn)](int64_t units, int64_t cost,
                                              const std::function<void(int64_t, int64_t)>& fn) {
    if (units <= 0) return;
    // Below about a million cycles of work a piece is not worth a thread.
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
      spawn([&, k] {
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

}  // namespace fastiou
