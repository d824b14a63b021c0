// The per-pixel rules of the confusion counts (core/confusion.h), as inline
// host/device functions: the C++ kernel and the CUDA kernel call them.
#pragma once

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "core/confusion.h"
#include "core/dispatch.h"
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

// The lowest value of an argmax value type (<cfloat>'s constants:
// std::numeric_limits is host-only in CUDA).
template <typename A>
FASTIOU_HD A argmax_lowest() {
  if constexpr (std::is_integral_v<A>) {
    static_assert(std::is_same_v<A, int64_t>, "integers are compared as int64");
    return INT64_MIN;
  } else if constexpr (sizeof(A) == 8) {
    return -DBL_MAX;
  } else {
    return -FLT_MAX;
  }
}

// Whether a float's bits are those of a zero or a subnormal value (every
// exponent bit clear): one bit test, where comparisons with the smallest
// normal number would take two and their conjunction.
template <typename A>
FASTIOU_HD bool zero_or_subnormal(FloatBits<A> b) {
  constexpr FloatBits<A> kExponent = sizeof(A) == 8 ? FloatBits<A>(0x7ff0000000000000ull) : FloatBits<A>(0x7f800000u);
  return (b & kExponent) == 0;
}

// A value as the argmax compares it: as stored, but -0.0 below +0.0 (it
// becomes minus the smallest normal number), as Keras' argmax reads floats,
// and a subnormal value read as a zero of its sign, as the CPU reads it
// (fastiou's C++ kernels and TensorFlow's run with denormals flushed): made
// explicit, so that the CUDA kernel and the pixel-at-a-time count, which do
// not flush, give the same classes. Worked on the bits: a zero or subnormal
// value becomes +0.0 when positive and minus the smallest normal number (the
// sign and the exponent's lowest bit) when negative; NaN stays NaN.
template <typename A>
FASTIOU_HD A argmax_key(A v) {
  if constexpr (std::is_integral_v<A>) {
    return v;
  } else {
    using U = FloatBits<A>;
    constexpr int kSignShift = 8 * sizeof(A) - 1;
    constexpr U kNegativeSmallest = (U(1) << kSignShift) | (U(1) << (sizeof(A) == 8 ? 52 : 23));
    U b = bits_of(v);
    const U negative = U(0) - (b >> kSignShift);  // all ones when the sign is set
    b = zero_or_subnormal<A>(b) ? (negative & kNegativeSmallest) : b;
    A key;
    std::memcpy(&key, &b, sizeof key);
    return key;
  }
}

// Whether an argmax over the values as stored (argmax_step without
// argmax_key) may give another class than argmax_class, told by the largest
// value it found, best: only where best is a zero or a subnormal. Otherwise
// the two agree, whether the CPU reads subnormal inputs as zeros or not.
// Where best is positive (or +inf), every zero or subnormal value lies below
// it both as stored and as its key (+0.0 or minus the smallest normal
// number); where best is negative or argmax_lowest, the pixel holds no zero
// or subnormal value at all (it would have beaten best). Every other value is
// its own key, so the largest key is best, at the same channels.
template <typename A>
FASTIOU_HD bool argmax_needs_keys(A best) {
  if constexpr (std::is_integral_v<A>) {
    return false;
  } else {
    return zero_or_subnormal<A>(bits_of(best));
  }
}

// The channel of the largest of n values at x, the first one on ties; 0 when
// every value is NaN or the lowest finite value (TensorFlow's argmax starts
// from the lowest value at channel 0, and so does Keras').
template <typename T>
FASTIOU_HD int32_t argmax_class(const T* x, int64_t n) {
  using A = ArgmaxValue<T>;
  A best = argmax_lowest<A>();
  int32_t at = 0;
  for (int32_t c = 0; c < static_cast<int32_t>(n); ++c) argmax_step(argmax_key(load_as<A>(x[c])), c, best, at);
  return at;
}

// A float32 subnormal value as a zero of its sign (a flushed read; see
// argmax_key): the sign bit alone is kept.
FASTIOU_HD float flush_subnormal(float f) {
  const uint32_t b = float_to_bits(f);
  return bits_to_float(zero_or_subnormal<float>(b) ? (b & 0x80000000u) : b);
}

// The class of one prediction by threshold: read as float32, compared with
// >= (both subnormal-flushed, as on the CPU: a logit of -1e-40 meets the
// threshold 0 of a probability of 0.5 everywhere).
template <typename T>
FASTIOU_HD int32_t threshold_class(T v, float threshold) {
  return flush_subnormal(load_as<float>(v)) >= flush_subnormal(threshold) ? 1 : 0;
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

// Where the weight of pixel `pixel` of image `image` lies in the weights
// [weight_rows, weight_cols]: one row for every image or one per image, one
// column for the image or one per pixel.
FASTIOU_HD int64_t weight_offset(const ConfusionArgs& a, int64_t image, int64_t pixel) {
  return (a.weight_rows == 1 ? 0 : image) * a.weight_cols + (a.weight_cols == 1 ? 0 : pixel);
}

// The class of one pixel by kRule; x points at its first stored value.
template <ClassRule kRule, typename T>
FASTIOU_HD int32_t pixel_class(const T* x, int64_t channels, float threshold) {
  if constexpr (kRule == ClassRule::kIndex) {
    return index_class(x[0]);
  } else if constexpr (kRule == ClassRule::kThreshold) {
    return threshold_class(x[0], threshold);
  } else {
    return argmax_class(x, channels);
  }
}

// One pixel's share of the counts: its classes and weight where it counts.
struct PixelCount {
  bool counted;
  int32_t t, p;  // its target and predicted class (0 where it does not count)
  double w;      // its weight (0 where it does not count)
};

// The share of pixel `flat` (over image and pixel) read from the inputs of a,
// one pixel at a time: what each CUDA thread does for its pixels, and what
// the host's pixel-at-a-time count (confusion_counts_by_pixel, for tests)
// does for every pixel. The C++ kernel takes the same steps in blocks.
template <ClassRule kTrue, ClassRule kPred, typename TT, typename TP>
FASTIOU_HD PixelCount confusion_pixel(const ConfusionArgs& a, int64_t flat) {
  const int32_t t =
      pixel_class<kTrue>(static_cast<const TT*>(a.y_true) + flat * a.true_channels, a.true_channels, a.threshold);
  const int32_t p =
      pixel_class<kPred>(static_cast<const TP*>(a.y_pred) + flat * a.pred_channels, a.pred_channels, a.threshold);
  double w = 1.0;
  if (a.has_weights) {
    const int64_t image = flat / a.pixels;
    const int64_t at = weight_offset(a, image, flat - image * a.pixels);
    const double stored = a.weight_dtype == DType::kFloat64 ? static_cast<const double*>(a.weights)[at]
                                                            : static_cast<double>(static_cast<const float*>(a.weights)[at]);
    w = pixel_weight_value(a.integer_weights, stored);
  }
  const bool ok = pixel_counted(a, t, p);
  return PixelCount{ok, ok ? t : 0, ok ? p : 0, ok ? w : 0.0};
}

template <ClassRule kRule>
using RuleTag = std::integral_constant<ClassRule, kRule>;

// Calls f(RuleTag) for a rule (host only).
template <typename F>
inline void dispatch_rule(int64_t rule, F&& f) {
  switch (static_cast<ClassRule>(rule)) {
    case ClassRule::kIndex: f(RuleTag<ClassRule::kIndex>{}); break;
    case ClassRule::kArgmax: f(RuleTag<ClassRule::kArgmax>{}); break;
    case ClassRule::kThreshold: f(RuleTag<ClassRule::kThreshold>{}); break;
  }
}

// Calls f(true rule tag, pred rule tag, TT{}, TP{}) for the rules and stored
// types of a, where the kernels read them (confusion_reads; bool as uint8);
// false, calling nothing, where they do not (host only).
template <typename F>
inline bool dispatch_confusion(const ConfusionArgs& a, F&& f) {
  bool ran = false;
  dispatch_rule(a.true_rule, [&](auto true_rule) {
    dispatch_rule(a.pred_rule, [&](auto pred_rule) {
      dispatch_label_dtype</*kBoolAsByte=*/true>(a.true_dtype, [&](auto tt) {
        dispatch_label_dtype</*kBoolAsByte=*/true>(a.pred_dtype, [&](auto pt) {
          using TT = decltype(tt);
          using TP = decltype(pt);
          // One constexpr bool: GCC 12 reads `if constexpr (a<decltype(x)>() && b<...>())`
          // in a lambda nested this deep as false.
          constexpr bool kReads = confusion_reads<decltype(true_rule)::value, TT, false>() &&
                                  confusion_reads<decltype(pred_rule)::value, TP, true>();
          if constexpr (kReads) {
            ran = true;
            f(true_rule, pred_rule, tt, pt);
          }
        });
      });
    });
  });
  return ran;
}

FASTIOU_LEVEL_END

}  // namespace fastiou
