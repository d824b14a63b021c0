// Per-pixel decisions shared by every fastiou back end.
//
// The per-pixel path (several channels, a softmax or sparse labels) decides
// for each pixel what its target is, whether it counts, its target, weight and
// probability for channel c, and its gradient for channel c. All of that lives
// here as inline host/device functions: the C++ kernels call them, so the CPU
// test suite runs the very code the CUDA kernels run. A kernel keeps only its
// thread mapping, loads, stores and reductions.
#pragma once

#include <cstdint>
#include <type_traits>

#include "core/overlap_kernels.h"
#include "core/overlap_math.h"
#include "core/simd_level.h"

namespace fastiou {
FASTIOU_LEVEL_BEGIN

// What a pixel's target is. Every pixel has exactly one kind; no value of the
// label stands for two of them.
enum class PixelKind : int32_t {
  kDense = 0,       // element targets: y_true holds one value per channel
  kClass = 1,       // a sparse label naming a class in [0, channels)
  kIgnored = 2,     // a sparse label equal to ignore_index: counts nowhere, zero gradient
  kOutOfRange = 3,  // a sparse label naming no class: an error in the stats,
                    // matches no channel in the gradient
};

struct PixelLabel {
  PixelKind kind;
  int64_t value;  // kClass: the class; kOutOfRange: the label as stored; otherwise 0
};

// How the per-pixel path reads a pixel: the op's options (from_logits;
// softmax, with from_logits a softmax over the channels instead of
// sigmoids; sparse, y_true holding one class index per pixel; has_ignore and
// ignore_index) and what the geometry adds, taken from the kernel arguments
// once per launch.
struct PixelRule : OverlapOptions {
  int64_t channels = 0;
  bool weights_per_pixel = false;  // one weight per pixel, shared by its channels
};

inline PixelRule make_pixel_rule(const OverlapInputs& in) {
  PixelRule r;
  static_cast<OverlapOptions&>(r) = in;
  r.channels = in.geometry.channels;
  r.weights_per_pixel = in.geometry.weights_per_pixel;
  return r;
}

// Whether the elementwise single-channel path applies instead of the
// per-pixel one: one channel, element targets and a sigmoid (a softmax over
// one channel is constant, so it takes the per-pixel path).
FASTIOU_HD bool single_channel_path(const PixelRule& r) {
  return r.channels == 1 && !r.sparse && !r.softmax;
}

// A sparse label as stored, read as an integer.
template <typename TT>
FASTIOU_HD int64_t load_label(TT v) {
  return static_cast<int64_t>(v);
}
template <>
FASTIOU_HD int64_t load_label<f16_t>(f16_t v) {
  return static_cast<int64_t>(half_bits_to_float(v.bits));
}
template <>
FASTIOU_HD int64_t load_label<bf16_t>(bf16_t v) {
  return static_cast<int64_t>(load_as<float>(v));
}

// The kind of a pixel whose sparse label is `label`.
FASTIOU_HD PixelLabel classify_label(const PixelRule& r, int64_t label) {
  if (r.has_ignore && label == r.ignore_index) return PixelLabel{PixelKind::kIgnored, 0};
  if (label < 0 || label >= r.channels) return PixelLabel{PixelKind::kOutOfRange, label};
  return PixelLabel{PixelKind::kClass, label};
}

// The kind of pixel `pixel` (flat over batch and spatial axes): y_true points
// at the whole target tensor.
template <typename TT>
FASTIOU_HD PixelLabel read_pixel_label(const PixelRule& r, const TT* y_true, int64_t pixel) {
  if (!r.sparse) return PixelLabel{PixelKind::kDense, 0};
  return classify_label(r, load_label(y_true[pixel]));
}

// Whether the pixel adds to the sums I, P, T.
FASTIOU_HD bool pixel_counts(PixelLabel l) {
  return l.kind == PixelKind::kDense || l.kind == PixelKind::kClass;
}

// Whether the pixel's gradient is computed (ignored pixels get zeros).
FASTIOU_HD bool pixel_has_gradient(PixelLabel l) { return l.kind != PixelKind::kIgnored; }

// Whether the pixel needs its softmax normalizer.
FASTIOU_HD bool pixel_needs_softmax(const PixelRule& r, PixelLabel l) {
  return r.from_logits && r.softmax && pixel_has_gradient(l);
}

// The range guards (BadInput in core/overlap_kernels.h): a dense target, or
// a prediction read as a probability, must lie in [0, 1]. NaN is not outside:
// it gives NaN sums.
template <typename A>
FASTIOU_HD bool outside_unit(A v) {
  return v < A(0) || v > A(1);
}

// Which value of an element the range guards refuse: its dense target t (0
// for sparse labels), else, from probabilities, its prediction x as stored;
// kNone for neither.
template <typename A>
FASTIOU_HD InputProblem range_problem(bool from_logits, A t, A x) {
  if (outside_unit(t)) return InputProblem::kTarget;
  if (!from_logits && outside_unit(x)) return InputProblem::kProbability;
  return InputProblem::kNone;
}

// Calls f(weight) with weight(c) the weight of channel c of the pixel whose
// weights wp points at (pixel_weights, nullptr for unit weights): one functor
// per kind of weights, so that channel loops stay branch-free.
template <typename A, typename TP, typename F>
FASTIOU_HD void with_pixel_weight(const PixelRule& r, const TP* wp, const F& f) {
  if (wp == nullptr) {
    f([](int64_t) { return A(1); });
  } else if (r.weights_per_pixel) {
    const A v = load_as<A>(wp[0]);
    f([v](int64_t) { return v; });
  } else {
    f([wp](int64_t c) { return load_as<A>(wp[c]); });
  }
}

// Weight of channel c alone (as with_pixel_weight), for kernels that visit
// a pixel's channels one at a time.
template <typename A, typename TP>
FASTIOU_HD A pixel_weight(const PixelRule& r, const TP* wp, int64_t c) {
  A value(1);
  with_pixel_weight<A>(r, wp, [&](const auto& weight) { value = weight(c); });
  return value;
}

// The element targets of pixel `pixel` (flat over batch and spatial axes),
// or nullptr for sparse labels; y_true points at the whole target tensor.
template <typename TT>
FASTIOU_HD const TT* pixel_targets(const PixelRule& r, const TT* y_true, int64_t pixel) {
  return r.sparse ? nullptr : y_true + pixel * r.channels;
}

// The weights of pixel `pixel`, or nullptr without weights.
template <typename TP>
FASTIOU_HD const TP* pixel_weights(const PixelRule& r, const TP* w, int64_t pixel) {
  if (w == nullptr) return nullptr;
  return w + (r.weights_per_pixel ? pixel : pixel * r.channels);
}

// Probability of channel c given its stored prediction x: as stored, the
// sigmoid of a logit, or its softmax with the pixel's normalizer.
template <typename A>
FASTIOU_HD A channel_probability(const PixelRule& r, A x, SoftmaxNorm<A> n) {
  if (!r.from_logits) return x;
  return r.softmax ? softmax_prob(x, n) : sigmoid(x);
}

// Targets of a pixel's channels: its element targets, or the one-hot of a
// class (cls = -1 for none).
template <typename A, typename TT>
struct DenseTargets {
  const TT* t;
  FASTIOU_HD A operator()(int64_t c) const { return load_as<A>(t[c]); }
};
template <typename A>
struct ClassTargets {
  Channel cls;
  // Through select: a conditional with constant arms keeps the channel loops
  // from vectorizing (see select).
  FASTIOU_HD A operator()(Channel c) const { return select(c == cls, A(1), A(0)); }
};

// Calls f(target) with target(c) the target of channel c of a counted or
// out-of-range pixel: its element targets (t, from pixel_targets), or the
// one-hot of its class (none when out of range).
template <typename A, typename TT, typename F>
FASTIOU_HD void with_pixel_targets(PixelLabel l, const TT* t, const F& f) {
  if (l.kind == PixelKind::kDense) {
    f(DenseTargets<A, TT>{t});
  } else {
    f(ClassTargets<A>{static_cast<Channel>(l.kind == PixelKind::kClass ? l.value : -1)});
  }
}

// Target of channel c. t points at the pixel's C element targets
// (pixel_targets; read for dense pixels only).
template <typename A, typename TT>
FASTIOU_HD A pixel_target(PixelLabel l, const TT* t, int64_t c) {
  if (l.kind == PixelKind::kDense) return DenseTargets<A, TT>{t}(c);
  return ClassTargets<A>{static_cast<Channel>(l.kind == PixelKind::kClass ? l.value : -1)}(c);
}

// Which formula gives a pixel's gradient: dL/dy_true, or dL/dy_pred from
// probabilities, through a sigmoid or through a softmax.
enum class GradKind : int32_t { kTrue, kProbabilities, kSigmoid, kSoftmax };

FASTIOU_HD GradKind grad_kind(const PixelRule& r, bool wrt_true) {
  if (wrt_true) return GradKind::kTrue;
  if (!r.from_logits) return GradKind::kProbabilities;
  return r.softmax ? GradKind::kSoftmax : GradKind::kSigmoid;
}

// Calls f(kind) with the kind as a compile-time constant, so that channel
// loops stay branch-free.
template <typename F>
FASTIOU_HD void dispatch_grad_kind(GradKind k, const F& f) {
  switch (k) {
    case GradKind::kTrue: f(std::integral_constant<GradKind, GradKind::kTrue>{}); break;
    case GradKind::kProbabilities: f(std::integral_constant<GradKind, GradKind::kProbabilities>{}); break;
    case GradKind::kSigmoid: f(std::integral_constant<GradKind, GradKind::kSigmoid>{}); break;
    case GradKind::kSoftmax: f(std::integral_constant<GradKind, GradKind::kSoftmax>{}); break;
  }
}

// dL/dp of one channel of a softmax (kSoftmax), which its Jacobian then
// takes to the logits (softmax_backward): the gradient from probabilities,
// which needs no probability.
template <typename A>
FASTIOU_HD A softmax_upstream(A t, A w, A g_i, A g_p) {
  return pred_gradient<false>(A(0), t, w, g_i, g_p);
}

// One channel's term of dot = sum_c p_c dL/dp_c, which the softmax's
// Jacobian needs (kSoftmax only), from the channel's probability p and its
// dp = softmax_upstream.
template <typename A>
FASTIOU_HD A softmax_dot_term(A p, A dp) {
  return p * dp;
}

// The gradient of one channel of a pixel that has one: probability p,
// target t, weight w, its group's dL/dI, dL/dP, dL/dT, and (kSoftmax) the
// pixel's dot.
template <GradKind K, typename A>
FASTIOU_HD A channel_gradient(A p, A t, A w, A g_i, A g_p, A g_t, A dot) {
  if constexpr (K == GradKind::kTrue) {
    return true_gradient(p, w, g_i, g_t);
  } else if constexpr (K == GradKind::kProbabilities) {
    return pred_gradient<false>(p, t, w, g_i, g_p);
  } else if constexpr (K == GradKind::kSigmoid) {
    return pred_gradient<true>(p, t, w, g_i, g_p);
  } else {
    return softmax_backward(p, softmax_upstream(t, w, g_i, g_p), dot);
  }
}

// The pixel's gradient, channel by channel, by formula K (grad_kind of the
// launch; callers dispatch it once with dispatch_grad_kind): store(c, value)
// receives dL/dy_pred (or, with kTrue, dL/dy_true) of channel c. t points at
// the pixel's element targets (pixel_targets); prob(c) and weight(c) give the
// channel's probability and weight; gi, gp, gt point at the pixel's group row
// of dL/dI, dL/dP, dL/dT. The channel loops are instantiated per kind of
// target (element targets, or the one-hot of a class), so that they stay
// branch-free; with a softmax, one walk adds up the dot, in channel order on
// the GPU and across vector lanes on the host.
template <GradKind K, typename A, typename TT, typename Prob, typename Weight, typename Store>
FASTIOU_HD void pixel_gradient(const PixelRule& r, PixelLabel l, const TT* t, const Prob& prob, const Weight& weight,
                               const A* gi, const A* gp, const A* gt, const Store& store) {
  const Channel n = static_cast<Channel>(r.channels);
  if (!pixel_has_gradient(l)) {
    for (Channel c = 0; c < n; ++c) store(c, A(0));
    return;
  }
  with_pixel_targets<A>(l, t, [&](const auto& target) {
    A dot = 0;
    if constexpr (K == GradKind::kSoftmax) {
      FASTIOU_SIMD_REDUCE(+, dot)
      for (Channel c = 0; c < n; ++c)
        dot += softmax_dot_term(prob(c), softmax_upstream(target(c), weight(c), gi[c], gp[c]));
    }
    for (Channel c = 0; c < n; ++c)
      store(c, channel_gradient<K>(prob(c), target(c), weight(c), gi[c], gp[c], gt[c], dot));
  });
}

FASTIOU_LEVEL_END
}  // namespace fastiou
