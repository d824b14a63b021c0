// What the Host and CUDA FFI handlers share: attributes, buffer checks and the
// translation of XLA buffers into the kernels' arguments.
#pragma once

#include <optional>
#include <string>
#include <utility>

#include "core/confusion.h"
#include "core/overlap_kernels.h"
#include "xla/ffi/api/ffi.h"

namespace fastiou_xla {

namespace ffi = ::xla::ffi;

inline std::optional<fastiou::DType> ToDType(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::PRED: return fastiou::DType::kBool;
    case ffi::DataType::U8: return fastiou::DType::kUInt8;
    case ffi::DataType::S32: return fastiou::DType::kInt32;
    case ffi::DataType::S64: return fastiou::DType::kInt64;
    case ffi::DataType::F16: return fastiou::DType::kFloat16;
    case ffi::DataType::BF16: return fastiou::DType::kBFloat16;
    case ffi::DataType::F32: return fastiou::DType::kFloat32;
    case ffi::DataType::F64: return fastiou::DType::kFloat64;
    default: return std::nullopt;
  }
}

inline fastiou::Shape Dims(const ffi::AnyBuffer& b) {
  const auto d = b.dimensions();
  return fastiou::Shape(d.begin(), d.end());
}

// Checks the buffers and fills the kernels' inputs; an empty string or the problem.
inline std::string FillInputs(const ffi::AnyBuffer& t, const ffi::AnyBuffer& p, const ffi::AnyBuffer& w,
                              const fastiou::OverlapOptions& o, fastiou::OverlapInputs* in) {
  const auto pd = ToDType(p.element_type());
  const auto td = ToDType(t.element_type());
  if (!pd || *pd == fastiou::DType::kBool || *pd == fastiou::DType::kUInt8 || *pd == fastiou::DType::kInt32 ||
      *pd == fastiou::DType::kInt64) {
    return "y_pred must be float16, bfloat16, float32 or float64";
  }
  if (!td) return "y_true must be bool, uint8, int32, int64 or a float type";
  static_cast<fastiou::OverlapOptions&>(*in) = o;
  // The raw custom-call target can be called without fastiou's Python checks.
  std::string err = fastiou::validate_label_dtype(o, *td);
  if (!err.empty()) return err;
  const fastiou::Shape weights = Dims(w);
  err = fastiou::validate_overlap_shapes(Dims(p), Dims(t), o.has_weights ? &weights : nullptr, o, &in->geometry);
  if (!err.empty()) return err;
  if (o.has_weights && w.element_type() != p.element_type()) return "weights must have y_pred's dtype";
  in->pred_dtype = *pd;
  in->true_dtype = *td;
  in->y_true = t.untyped_data();
  in->y_pred = p.untyped_data();
  in->weights = o.has_weights ? w.untyped_data() : nullptr;
  return std::string();
}

inline fastiou::DType AccDType(fastiou::DType pred) {
  return pred == fastiou::DType::kFloat64 ? fastiou::DType::kFloat64 : fastiou::DType::kFloat32;
}

inline ffi::DataType FfiDType(fastiou::DType d) {
  return d == fastiou::DType::kFloat64 ? ffi::DataType::F64 : ffi::DataType::F32;
}

// Checks that a sums-shaped buffer (results, or the gradient's dI, dP, dT) has
// the stats' shape and accumulation dtype.
inline std::string CheckSums(const ffi::AnyBuffer& b, const char* name, const fastiou::OverlapInputs& in) {
  const auto& g = in.geometry;
  const fastiou::Shape want = in.per_image ? fastiou::Shape{g.batch, g.channels} : fastiou::Shape{g.channels};
  if (Dims(b) != want) {
    return std::string(name) + " shape " + fastiou::shape_string(Dims(b)) + " must be " + fastiou::shape_string(want);
  }
  if (b.element_type() != FfiDType(AccDType(in.pred_dtype))) {
    return std::string(name) + " must be " + fastiou::dtype_name(AccDType(in.pred_dtype));
  }
  return std::string();
}

inline ffi::Error Invalid(const std::string& message) { return ffi::Error::InvalidArgument("fastiou: " + message); }

// The operands of the confusion counts after a handler's context:
// (y_true, y_pred, weights) -> counts, with the options as attributes.
template <typename Binding>
auto BindConfusionOperands(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Attrs<fastiou::ConfusionOptions>();
}

// Checks the buffers of the confusion counts and fills the kernel's
// arguments but its counts (the handler's: float64, or a float64 scratch for
// float32 counts). Empty, or the problem; *narrow tells float32 counts.
inline std::string PrepareConfusion(const ffi::AnyBuffer& y_true, const ffi::AnyBuffer& y_pred,
                                    const ffi::AnyBuffer& weights, const ffi::AnyBuffer& counts,
                                    const fastiou::ConfusionOptions& options, fastiou::ConfusionArgs* a,
                                    bool* narrow) {
  static_cast<fastiou::ConfusionOptions&>(*a) = options;
  std::string err = fastiou::validate_confusion(Dims(y_true), Dims(y_pred), Dims(weights), a);
  if (!err.empty()) return err;
  const auto td = ToDType(y_true.element_type());
  const auto pd = ToDType(y_pred.element_type());
  const auto wd = ToDType(weights.element_type());
  if (!td || !pd || !wd) return "y_true, y_pred and weights must be bool, uint8, int32, int64 or a float type";
  const fastiou::Shape want{3, a->num_classes};
  const ffi::DataType out_type = counts.element_type();
  if (Dims(counts) != want || (out_type != ffi::DataType::F64 && out_type != ffi::DataType::F32)) {
    return "counts must be float64 or float32 of shape " + fastiou::shape_string(want);
  }
  a->true_dtype = *td;
  a->pred_dtype = *pd;
  a->weight_dtype = *wd;
  a->y_true = y_true.untyped_data();
  a->y_pred = y_pred.untyped_data();
  a->weights = weights.untyped_data();
  *narrow = out_type == ffi::DataType::F32;
  // Weights of a type the kernels do not read, rules they do not take.
  return fastiou::confusion_input_problem(*a);
}

// Checks a stats call's buffers and fills the kernel's arguments (all but the
// workspace); an empty string or the problem.
inline std::string PrepareStats(const ffi::AnyBuffer& y_true, const ffi::AnyBuffer& y_pred,
                                const ffi::AnyBuffer& weights, const fastiou::OverlapOptions& options,
                                ffi::AnyBuffer& intersection,
                                ffi::AnyBuffer& pred_sum, ffi::AnyBuffer& true_sum, fastiou::StatsArgs* a) {
  std::string err = FillInputs(y_true, y_pred, weights, options, a);
  if (err.empty()) err = CheckSums(intersection, "intersection", *a);
  if (err.empty()) err = CheckSums(pred_sum, "pred_sum", *a);
  if (err.empty()) err = CheckSums(true_sum, "true_sum", *a);
  a->intersection = intersection.untyped_data();
  a->pred_sum = pred_sum.untyped_data();
  a->true_sum = true_sum.untyped_data();
  return err;
}

// The same for a gradient call.
inline std::string PrepareGrad(const ffi::AnyBuffer& y_true, const ffi::AnyBuffer& y_pred,
                               const ffi::AnyBuffer& weights, const ffi::AnyBuffer& grad_i,
                               const ffi::AnyBuffer& grad_p, const ffi::AnyBuffer& grad_t,
                               const fastiou::GradOptions& options, ffi::AnyBuffer& out, fastiou::GradArgs* a) {
  std::string err = FillInputs(y_true, y_pred, weights, options, a);
  if (err.empty()) err = CheckSums(grad_i, "grad_intersection", *a);
  if (err.empty()) err = CheckSums(grad_p, "grad_pred_sum", *a);
  if (err.empty()) err = CheckSums(grad_t, "grad_true_sum", *a);
  if (err.empty() && (Dims(out) != Dims(y_pred) || out.element_type() != y_pred.element_type())) {
    err = "the gradient must have y_pred's shape and dtype";
  }
  static_cast<fastiou::GradOnlyOptions&>(*a) = options;
  a->grad_intersection = grad_i.untyped_data();
  a->grad_pred_sum = grad_p.untyped_data();
  a->grad_true_sum = grad_t.untyped_data();
  a->output = out.untyped_data();
  return err;
}

}  // namespace fastiou_xla

// The options as the handlers' attributes (core/overlap_options.h), decoded
// straight into the kernels' option structs: a call must pass every one.
#define FASTIOU_FFI_MEMBER(type, name, init, kind) , ::xla::ffi::StructMember<type>(#name)
#define FASTIOU_FFI_DECODE(T, members) XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(T members)
FASTIOU_FFI_DECODE(fastiou::OverlapOptions, FASTIOU_OVERLAP_OPTIONS(FASTIOU_FFI_MEMBER));
FASTIOU_FFI_DECODE(fastiou::ConfusionOptions, FASTIOU_CONFUSION_OPTIONS(FASTIOU_FFI_MEMBER));
FASTIOU_FFI_DECODE(fastiou::GradOptions,
                   FASTIOU_OVERLAP_OPTIONS(FASTIOU_FFI_MEMBER) FASTIOU_GRAD_ONLY_OPTIONS(FASTIOU_FFI_MEMBER));

namespace fastiou_xla {

// The operands of the handlers, the same on every platform, after the
// platform's context (binding: ffi::Ffi::Bind() with its Ctx<...> added).
// Stats: y_true, y_pred, weights; I, P, T; the options.
template <typename Binding>
auto BindStatsOperands(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Attrs<fastiou::OverlapOptions>();
}

// Gradient: y_true, y_pred, weights, dL/dI, dL/dP, dL/dT; the gradient; the
// options.
template <typename Binding>
auto BindGradOperands(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Attrs<fastiou::GradOptions>();
}

}  // namespace fastiou_xla
