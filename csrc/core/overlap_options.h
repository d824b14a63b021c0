// The options of fastiou's overlap ops, defined once.
//
// Every door is generated from these lists: the TensorFlow op attributes and
// their reading (csrc/tf), the XLA backend config the TensorFlow lowering
// writes and the XLA FFI attribute decoding (csrc/xla), the keyword arguments
// of the Python module (csrc/python/module.cc), and the structs below that
// the kernels read. A new option is one line here.
//
// X(type, name, default, kind), type bool or int64_t, in the order of the
// attributes. kind says how a door that takes None for "not given" (the
// Python module) takes the option:
//   setting   a keyword argument with the default;
//   flag      no argument: whether the weights input, or the optional option
//             that follows the flag, was given;
//   optional  a keyword argument that defaults to None (its flag false).
#pragma once

#include <cstdint>

// The options of both ops: the statistics and their gradient.
#define FASTIOU_OVERLAP_OPTIONS(X)            \
  X(bool, from_logits, false, setting)        \
  X(bool, per_image, true, setting)           \
  X(bool, has_weights, false, flag)           \
  X(bool, softmax, false, setting)            \
  X(bool, sparse, false, setting)             \
  X(bool, has_ignore, false, flag)            \
  X(int64_t, ignore_index, 0, optional)       \
  X(bool, check_range, true, setting)

// The gradient op's options beyond those.
#define FASTIOU_GRAD_ONLY_OPTIONS(X) X(bool, wrt_true, false, setting)

#define FASTIOU_OPTION_MEMBER(type, name, init, kind) type name = init;

namespace fastiou {

// from_logits: y_pred holds logits, activated in the kernel; without it,
//   probabilities.
// per_image: sums per (image, channel); without it, per channel over the batch.
// has_weights: the weights input holds per-element (or per-pixel) weights;
//   without it the weights are 1 and the input is not read.
// softmax: with from_logits, a softmax over the channels instead of a sigmoid
//   per channel.
// sparse: y_true holds one integer class index per pixel instead of one value
//   per element; it is compared with the channel index, never expanded.
// has_ignore, ignore_index: sparse pixels labelled ignore_index count nowhere
//   and get a zero gradient.
// check_range: the stats pass refuses dense targets and, without
//   from_logits, predictions outside [0, 1] (the range guards, BadInput in
//   core/overlap_kernels.h); without it they are summed as they are. Sparse
//   labels outside [0, C) are refused either way. The gradient op takes it
//   with the other options and checks nothing.
struct OverlapOptions {
  FASTIOU_OVERLAP_OPTIONS(FASTIOU_OPTION_MEMBER)
};

// wrt_true: the gradient with respect to y_true instead of y_pred.
struct GradOnlyOptions {
  FASTIOU_GRAD_ONLY_OPTIONS(FASTIOU_OPTION_MEMBER)
};

// The gradient op's options, in the order of its attributes.
struct GradOptions : OverlapOptions, GradOnlyOptions {};

}  // namespace fastiou
