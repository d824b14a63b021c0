// Attributes and shapes of fastiou's TensorFlow ops, shared by their OpKernels
// (CPU, GPU) and their XLA op kernels.
#pragma once

#include "core/confusion.h"
#include "core/overlap_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor_shape.h"
#if FASTIOU_WITH_CUDA
#include "xla/stream_executor/stream.h"
#endif

namespace fastiou_tf {

// The op's options (wrt_true for the gradient op only) and dtypes.
struct OverlapAttrs : fastiou::GradOptions {
  tensorflow::DataType pred = tensorflow::DT_FLOAT;
  tensorflow::DataType tru = tensorflow::DT_FLOAT;
  tensorflow::DataType acc = tensorflow::DT_FLOAT;
};

// The options as attributes of REGISTER_OP: .Attr("from_logits: bool = false").
#define FASTIOU_TF_TYPE_bool "bool"
#define FASTIOU_TF_TYPE_int64_t "int"
#define FASTIOU_TF_TYPE_float "float"
#define FASTIOU_TF_ATTR(type, name, init, kind) .Attr(#name ": " FASTIOU_TF_TYPE_##type " = " #init)

inline fastiou::DType ToDType(tensorflow::DataType dt) {
  switch (dt) {
    case tensorflow::DT_BOOL: return fastiou::DType::kBool;
    case tensorflow::DT_UINT8: return fastiou::DType::kUInt8;
    case tensorflow::DT_INT32: return fastiou::DType::kInt32;
    case tensorflow::DT_INT64: return fastiou::DType::kInt64;
    case tensorflow::DT_HALF: return fastiou::DType::kFloat16;
    case tensorflow::DT_BFLOAT16: return fastiou::DType::kBFloat16;
    case tensorflow::DT_FLOAT: return fastiou::DType::kFloat32;
    default: return fastiou::DType::kFloat64;  // the op's type constraints admit nothing else
  }
}

// Reads the attributes and checks the ones the type constraints cannot.
inline absl::Status ReadOverlapAttrs(tensorflow::OpKernelConstruction* ctx, bool gradient,
                                     OverlapAttrs* a) {
  using tensorflow::DataTypeString;
  using tensorflow::errors::InvalidArgument;
#define FASTIOU_TF_READ(type, name, init, kind) TF_RETURN_IF_ERROR(ctx->GetAttr(#name, &a->name));
  FASTIOU_OVERLAP_OPTIONS(FASTIOU_TF_READ)
  if (gradient) {
    FASTIOU_GRAD_ONLY_OPTIONS(FASTIOU_TF_READ)
  }
#undef FASTIOU_TF_READ
  TF_RETURN_IF_ERROR(ctx->GetAttr("Ttrue", &a->tru));
  TF_RETURN_IF_ERROR(ctx->GetAttr("T", &a->pred));
  TF_RETURN_IF_ERROR(ctx->GetAttr("Tacc", &a->acc));
  const std::string label_error = fastiou::validate_label_dtype(*a, ToDType(a->tru));
  if (!label_error.empty()) return InvalidArgument("fastiou: ", label_error);
  const tensorflow::DataType expected =
      a->pred == tensorflow::DT_DOUBLE ? tensorflow::DT_DOUBLE : tensorflow::DT_FLOAT;
  if (a->acc != expected) {
    return InvalidArgument("Tacc must be ", DataTypeString(expected), " for y_pred of type ",
                           DataTypeString(a->pred), ", got ", DataTypeString(a->acc));
  }
  return absl::OkStatus();
}

// The confusion-count op's options (core/confusion.h).
inline absl::Status ReadConfusionAttrs(tensorflow::OpKernelConstruction* ctx, fastiou::ConfusionOptions* o) {
#define FASTIOU_TF_READ(type, name, init, kind) TF_RETURN_IF_ERROR(ctx->GetAttr(#name, &o->name));
  FASTIOU_CONFUSION_OPTIONS(FASTIOU_TF_READ)
#undef FASTIOU_TF_READ
  return absl::OkStatus();
}

inline fastiou::Shape ToShape(const tensorflow::TensorShape& shape) {
  const auto dims = shape.dim_sizes();
  return fastiou::Shape(dims.begin(), dims.end());
}

// Checks y_true, y_pred and weights shapes and derives the geometry.
inline absl::Status ValidateShapes(const OverlapAttrs& a, const tensorflow::TensorShape& y_true,
                                   const tensorflow::TensorShape& y_pred,
                                   const tensorflow::TensorShape& weights,
                                   fastiou::OverlapGeometry* g) {
  const fastiou::Shape w = ToShape(weights);
  const std::string err = fastiou::validate_overlap_shapes(ToShape(y_pred), ToShape(y_true),
                                                           a.has_weights ? &w : nullptr, a, g);
  if (!err.empty()) return tensorflow::errors::InvalidArgument("fastiou: ", err);
  return absl::OkStatus();
}

inline tensorflow::TensorShape StatsShape(const OverlapAttrs& a, const fastiou::OverlapGeometry& g) {
  return a.per_image ? tensorflow::TensorShape({g.batch, g.channels})
                     : tensorflow::TensorShape({g.channels});
}

// The C++ kernels' ParallelFor on TensorFlow's intra-op thread pool.
inline fastiou::ParallelFor ThreadPoolFor(tensorflow::OpKernelContext* ctx) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  return [pool](int64_t units, int64_t cost, const std::function<void(int64_t, int64_t)>& fn) {
    if (units <= 0) return;
    if (units == 1) {
      fn(0, 1);
      return;
    }
    pool->ParallelFor(units, cost, fn);
  };
}

#if FASTIOU_WITH_CUDA
// The cudaStream_t of the stream TensorFlow runs this op's GPU work on.
inline void* GpuStream(tensorflow::OpKernelContext* ctx) {
  return ctx->op_device_context()->stream()->platform_specific_handle().stream;
}

// The CUDA driver's problem with this build's kernels, as the op's error.
inline absl::Status CudaDriverStatus() {
  const std::string problem = fastiou::cuda_driver_problem();
  if (problem.empty()) return absl::OkStatus();
  return tensorflow::errors::FailedPrecondition("fastiou: ", problem);
}
#endif

}  // namespace fastiou_tf
