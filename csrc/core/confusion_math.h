// The per-pixel rules of the confusion counts (core/confusion.h), as inline
// host/device functions: the C++ kernel calls them, and so will the CUDA one.
#pragma once

#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "core/confusion.h"
#include "core/overlap_math.h"
#include "core/simd_level.h"

namespace fastiou {
FASTIOU_LEVEL_BEGIN

// The class of one stored index value: integers as they are; floats
// truncated toward zero, as a cast to an integer does (-0.5 is class 0). A
// NaN or a value beyond int32 gives -1: no class (num_classes is below 2^24).
template <typename T>
FASTIOU_HD int32_t index_class(T v) {
  if constexpr (std::is_integral_v<T>) {
    const int64_t i = static_cast<int64_t>(v);
    return (i >= int64_t(INT32_MIN) && i <= int64_t(INT32_MAX)) ? static_cast<int32_t>(i) : int32_t(-1);
  } else if constexpr (sizeof(T) == 8) {
    const double d = load_as<double>(v);
    return (d > -2147483649.0 && d < 2147483648.0) ? static_cast<int32_t>(d) : int32_t(-1);
  } else {
    const float f = load_as<float>(v);
    return (f >= -2147483648.0f && f < 2147483648.0f) ? static_cast<int32_t>(f) : int32_t(-1);
  }
}

// One step of an argmax over channels: channel c of value v against the best
// so far. Strictly greater wins, so ties keep the first channel, and a NaN
// (which compares false) never wins. Bit-mask selects: no branch, whatever
// the values.
template <typename A>
FASTIOU_HD void argmax_step(A v, int32_t c, A& best, int32_t& at) {
  const bool greater = v > best;
  best = select(greater, v, best);
  at = select(greater, c, at);
}

// The value type an argmax compares values of type T in.
template <typename T>
using ArgmaxValue = std::conditional_t<std::is_integral_v<T>, int64_t, std::conditional_t<sizeof(T) == 8, double, float>>;

// A value as the argmax compares it: as stored, but -0.0 below +0.0 (it
// becomes minus the smallest normal number), as Keras' argmax reads floats.
template <typename A>
FASTIOU_HD A argmax_key(A v) {
  if constexpr (std::is_integral_v<A>) {
    return v;
  } else {
    return (v == A(0) && std::signbit(v)) ? -std::numeric_limits<A>::min() : v;
  }
}

// The channel of the largest of n values at x, the first one on ties; 0 when
// every value is NaN or the lowest finite value (TensorFlow's argmax starts
// from the lowest value at channel 0, and so does Keras').
template <typename T>
FASTIOU_HD int32_t argmax_class(const T* x, int64_t n) {
  using A = ArgmaxValue<T>;
  A best = std::numeric_limits<A>::lowest();
  int32_t at = 0;
  for (int32_t c = 0; c < static_cast<int32_t>(n); ++c) argmax_step(argmax_key(load_as<A>(x[c])), c, best, at);
  return at;
}

// The class of one prediction by threshold: read as float32, compared with >=.
template <typename T>
FASTIOU_HD int32_t threshold_class(T v, float threshold) {
  return load_as<float>(v) >= threshold ? 1 : 0;
}

// The stored types the kernels read by each rule; fastiou.metrics casts any
// other first (its _KERNEL_DTYPES lists the same):
//   y_true by kIndex: bool, uint8, int32, int64, float32, float64;
//   y_true by kArgmax: uint8, float32, float64;
//   y_pred by kIndex: bool, uint8, int32, int64;
//   y_pred by kArgmax or kThreshold: float16, bfloat16, float32, float64.
// (bool is read as uint8.)
template <ClassRule kRule, typename T, bool kPred>
constexpr bool confusion_reads() {
  constexpr bool kInteger = std::is_same_v<T, uint8_t> || std::is_same_v<T, int32_t> || std::is_same_v<T, int64_t>;
  constexpr bool kFloat = std::is_same_v<T, f16_t> || std::is_same_v<T, bf16_t> || std::is_same_v<T, float> ||
                          std::is_same_v<T, double>;
  if constexpr (kPred) {
    return kRule == ClassRule::kIndex ? kInteger : kFloat;
  } else if constexpr (kRule == ClassRule::kIndex) {
    return kInteger || std::is_same_v<T, float> || std::is_same_v<T, double>;
  } else if constexpr (kRule == ClassRule::kArgmax) {
    return std::is_same_v<T, uint8_t> || std::is_same_v<T, float> || std::is_same_v<T, double>;
  } else {
    return false;  // kThreshold is for y_pred only
  }
}

// Whether a pixel of target class t and predicted class p counts. Bitwise
// ands and unsigned compares: no branch, so loops over pixels vectorize.
FASTIOU_HD bool pixel_counted(const ConfusionOptions& o, int32_t t, int32_t p) {
  const uint32_t k = static_cast<uint32_t>(o.num_classes);
  const bool ignored = o.has_ignore & (static_cast<int64_t>(t) == o.ignore_class);
  return (static_cast<uint32_t>(t) < k) & (static_cast<uint32_t>(p) < k) & !ignored;
}

// The weight of one pixel as stored, truncated toward zero with
// integer_weights (as a cast to an integer does).
FASTIOU_HD double pixel_weight_value(bool integer_weights, double w) { return integer_weights ? trunc(w) : w; }

FASTIOU_LEVEL_END

}  // namespace fastiou
