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

#include "core/overlap_kernels.h"
#include "core/overlap_math.h"

namespace fastiou {

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

// How the per-pixel path reads a pixel: the options every decision needs,
// taken from the kernel arguments once per launch.
struct PixelRule {
  int64_t channels = 0;
  bool from_logits = false;
  bool softmax = false;  // with from_logits: a softmax over the channels instead of sigmoids
  bool sparse = false;   // y_true holds one class index per pixel
  bool has_ignore = false;
  int64_t ignore_index = 0;
  bool weights_per_pixel = false;  // one weight per pixel, shared by its channels
};

inline PixelRule make_pixel_rule(const OverlapInputs& in) {
  PixelRule r;
  r.channels = in.geometry.channels;
  r.from_logits = in.from_logits;
  r.softmax = in.labels.softmax;
  r.sparse = in.labels.sparse;
  r.has_ignore = in.labels.has_ignore;
  r.ignore_index = in.labels.ignore_index;
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

// Target of channel c. t points at the pixel's C element targets
// (pixel_targets; read for dense pixels only).
template <typename A, typename TT>
FASTIOU_HD A pixel_target(PixelLabel l, const TT* t, int64_t c) {
  if (l.kind == PixelKind::kDense) return load_as<A>(t[c]);
  return (l.kind == PixelKind::kClass && c == l.value) ? A(1) : A(0);
}

// Weight of channel c. w points at the pixel's weights (pixel_weights), or
// is nullptr for unit weights.
template <typename A, typename TP>
FASTIOU_HD A pixel_weight(const PixelRule& r, const TP* w, int64_t c) {
  if (w == nullptr) return A(1);
  return load_as<A>(w[r.weights_per_pixel ? 0 : c]);
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
  int64_t cls;
  // Through select: a conditional with constant arms keeps the channel loops
  // from vectorizing (see select).
  FASTIOU_HD A operator()(int64_t c) const { return select(c == cls, A(1), A(0)); }
};

// dL/dy_pred of a counted pixel's channels for one kind of target (see
// pixel_gradient).
template <typename A, typename Target, typename Prob, typename Weight, typename Store>
FASTIOU_HD void pred_gradient_channels(const PixelRule& r, const Target& target, const Prob& prob,
                                       const Weight& weight, const A* gi, const A* gp, A* dp_cache,
                                       const Store& store) {
  const int64_t C = r.channels;
  if (!r.from_logits) {
    // dL/dp = w (g_I t + g_P) needs no probability. Computed apart from the
    // stores where memory is at hand, the loop vectorizes.
    if (dp_cache != nullptr) {
      for (int64_t c = 0; c < C; ++c) dp_cache[c] = pred_gradient<false>(A(0), target(c), weight(c), gi[c], gp[c]);
      for (int64_t c = 0; c < C; ++c) store(c, dp_cache[c]);
    } else {
      for (int64_t c = 0; c < C; ++c) store(c, pred_gradient<false>(A(0), target(c), weight(c), gi[c], gp[c]));
    }
    return;
  }
  if (!r.softmax) {
    for (int64_t c = 0; c < C; ++c) store(c, pred_gradient<true>(prob(c), target(c), weight(c), gi[c], gp[c]));
    return;
  }
  // The softmax Jacobian couples the channels: one walk for
  // dot = sum_c p_c dL/dp_c, in channel order, one to store p_c (dL/dp_c - dot).
  A dot = 0;
  if (dp_cache != nullptr) {
    for (int64_t c = 0; c < C; ++c) {
      dp_cache[c] = pred_gradient<false>(prob(c), target(c), weight(c), gi[c], gp[c]);
      dot += prob(c) * dp_cache[c];
    }
    for (int64_t c = 0; c < C; ++c) store(c, softmax_backward(prob(c), dp_cache[c], dot));
    return;
  }
  for (int64_t c = 0; c < C; ++c) {
    const A p = prob(c);
    dot += p * pred_gradient<false>(p, target(c), weight(c), gi[c], gp[c]);
  }
  for (int64_t c = 0; c < C; ++c) {
    const A p = prob(c);
    store(c, softmax_backward(p, pred_gradient<false>(p, target(c), weight(c), gi[c], gp[c]), dot));
  }
}

// The pixel's gradient, channel by channel: store(c, value) receives
// dL/dy_pred (or, with wrt_true, dL/dy_true) of channel c. t points at the
// pixel's element targets (pixel_targets); prob(c) and weight(c) give the
// channel's probability and weight; gi, gp, gt point at the pixel's group row
// of dL/dI, dL/dP, dL/dT. The channel loops are instantiated once per kind of
// target (element targets, or the one-hot of a class) so that they stay
// branch-free. dp_cache (C values, or nullptr) keeps dL/dp_c between the two
// softmax walks where memory is at hand; without it the second walk
// recomputes them.
template <typename A, typename TT, typename Prob, typename Weight, typename Store>
FASTIOU_HD void pixel_gradient(const PixelRule& r, bool wrt_true, PixelLabel l, const TT* t, const Prob& prob,
                               const Weight& weight, const A* gi, const A* gp, const A* gt, A* dp_cache,
                               const Store& store) {
  const int64_t C = r.channels;
  if (!pixel_has_gradient(l)) {
    for (int64_t c = 0; c < C; ++c) store(c, A(0));
    return;
  }
  if (wrt_true) {
    for (int64_t c = 0; c < C; ++c) store(c, true_gradient(prob(c), weight(c), gi[c], gt[c]));
    return;
  }
  if (l.kind == PixelKind::kDense) {
    pred_gradient_channels(r, DenseTargets<A, TT>{t}, prob, weight, gi, gp, dp_cache, store);
  } else {
    // A class, or (out of range) none.
    pred_gradient_channels(r, ClassTargets<A>{l.kind == PixelKind::kClass ? l.value : -1}, prob, weight, gi, gp,
                           dp_cache, store);
  }
}

}  // namespace fastiou
