// TensorFlow custom ops for the binary/multi-label overlap statistics and their
// gradient. The kernels validate every input and hand the work to the
// framework-neutral kernels: C++ on TensorFlow's intra-op thread pool, CUDA on
// TensorFlow's stream for the op's GPU.
#include <string>

#include "core/overlap_kernels.h"
#include "tf/overlap_attrs.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace fastiou_tf {

using tensorflow::DataType;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

#define FASTIOU_PRED_TYPES "{half, bfloat16, float, double}"
#define FASTIOU_TRUE_TYPES "{bool, uint8, int32, int64, half, bfloat16, float, double}"

// Shape of the sums: [batch, channels] per image, [channels] over the batch.
absl::Status StatsShape(InferenceContext* c, ShapeHandle pred, ShapeHandle* out) {
  bool per_image = true;
  TF_RETURN_IF_ERROR(c->GetAttr("per_image", &per_image));
  if (!c->RankKnown(pred)) {
    *out = c->UnknownShape();
    return absl::OkStatus();
  }
  DimensionHandle channels = c->Dim(pred, -1);
  *out = per_image ? c->Matrix(c->Dim(pred, 0), channels) : c->Vector(channels);
  return absl::OkStatus();
}

absl::Status MergeInputs(InferenceContext* c, ShapeHandle* pred) {
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(1), 2, pred));
  bool sparse = false;
  TF_RETURN_IF_ERROR(c->GetAttr("sparse", &sparse));
  if (sparse) return absl::OkStatus();  // class indices: checked by the kernel
  ShapeHandle merged;
  TF_RETURN_IF_ERROR(c->Merge(c->input(0), *pred, &merged));
  *pred = merged;
  return absl::OkStatus();
}

REGISTER_OP("FastiouOverlapStats")
    .Input("y_true: Ttrue")
    .Input("y_pred: T")
    .Input("weights: T")
    .Output("intersection: Tacc")
    .Output("pred_sum: Tacc")
    .Output("true_sum: Tacc")
    .Attr("T: " FASTIOU_PRED_TYPES)
    .Attr("Ttrue: " FASTIOU_TRUE_TYPES)
    .Attr("Tacc: {float, double}")
    FASTIOU_OVERLAP_OPTIONS(FASTIOU_TF_ATTR)
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle pred, out;
      TF_RETURN_IF_ERROR(MergeInputs(c, &pred));
      TF_RETURN_IF_ERROR(StatsShape(c, pred, &out));
      for (int i = 0; i < 3; ++i) c->set_output(i, out);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Soft overlap sums of channels-last masks in one pass:
I = sum w*t*p, P = sum w*p, T = sum w*t per (image, channel), or per channel
over the whole batch when per_image is false. With from_logits the sigmoid is
applied to y_pred on the fly (a softmax over the channels with softmax). With
sparse, y_true holds one class index per pixel (shape of y_pred without its
channel axis, or with a channel axis of 1) and t = (index == channel); pixels
labelled ignore_index (with has_ignore) count nowhere. Tacc is float64 for
float64 y_pred, else float32.
)doc");

REGISTER_OP("FastiouOverlapGrad")
    .Input("y_true: Ttrue")
    .Input("y_pred: T")
    .Input("weights: T")
    .Input("grad_intersection: Tacc")
    .Input("grad_pred_sum: Tacc")
    .Input("grad_true_sum: Tacc")
    .Output("grad: T")
    .Attr("T: " FASTIOU_PRED_TYPES)
    .Attr("Ttrue: " FASTIOU_TRUE_TYPES)
    .Attr("Tacc: {float, double}")
    FASTIOU_OVERLAP_OPTIONS(FASTIOU_TF_ATTR)
    FASTIOU_GRAD_ONLY_OPTIONS(FASTIOU_TF_ATTR)
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle pred;
      TF_RETURN_IF_ERROR(MergeInputs(c, &pred));
      c->set_output(0, pred);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of the overlap sums, in one pass: given dL/dI, dL/dP and dL/dT per
group, writes dL/dy_pred = w*(dL/dI*t + dL/dP) (times p*(1-p) with
from_logits), or with wrt_true dL/dy_true = w*(dL/dI*p + dL/dT).
)doc");

// Attributes and input checks shared by the stats and gradient kernels.
class OverlapOpBase : public OpKernel {
 public:
  OverlapOpBase(OpKernelConstruction* ctx, bool gradient) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadOverlapAttrs(ctx, gradient, &attrs_));
  }

 protected:
  // The CUDA driver can run the kernels (a too-old one is named in the error).
  static absl::Status CheckDriver() {
#if FASTIOU_WITH_CUDA
    return CudaDriverStatus();
#else
    return absl::OkStatus();
#endif
  }

  absl::Status ValidateInputs(OpKernelContext* ctx, fastiou::OverlapGeometry* g) const {
    return ValidateShapes(attrs_, ctx->input(0).shape(), ctx->input(1).shape(), ctx->input(2).shape(), g);
  }

  // The inputs both kernels read, after ValidateInputs.
  void FillInputs(OpKernelContext* ctx, const fastiou::OverlapGeometry& g,
                  fastiou::OverlapInputs* in) const {
    static_cast<fastiou::OverlapOptions&>(*in) = attrs_;
    in->geometry = g;
    in->pred_dtype = ToDType(ctx->input(1).dtype());
    in->true_dtype = ToDType(ctx->input(0).dtype());
    in->y_true = ctx->input(0).data();
    in->y_pred = ctx->input(1).data();
    in->weights = attrs_.has_weights ? ctx->input(2).data() : nullptr;
  }

  OverlapAttrs attrs_;
};

// The same OpKernel serves both devices; kGpu picks the kernel it calls and
// where its scratch lives.
template <bool kGpu>
class OverlapStatsOp : public OverlapOpBase {
 public:
  explicit OverlapStatsOp(OpKernelConstruction* ctx) : OverlapOpBase(ctx, false) {}

  void Compute(OpKernelContext* ctx) override {
    if constexpr (kGpu) OP_REQUIRES_OK(ctx, CheckDriver());
    fastiou::OverlapGeometry g;
    OP_REQUIRES_OK(ctx, ValidateInputs(ctx, &g));
    Tensor* out[3];
    for (int i = 0; i < 3; ++i) OP_REQUIRES_OK(ctx, ctx->allocate_output(i, StatsShape(attrs_, g), &out[i]));
    fastiou::StatsArgs a;
    FillInputs(ctx, g, &a);
    a.intersection = out[0]->data();
    a.pred_sum = out[1]->data();
    a.true_sum = out[2]->data();
    int64_t workspace_doubles = fastiou::stats_workspace_doubles(g);
#if FASTIOU_WITH_CUDA
    if constexpr (kGpu) workspace_doubles = fastiou::stats_workspace_doubles_cuda(a);
#endif
    Tensor workspace;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_DOUBLE, TensorShape({workspace_doubles}),
                                           &workspace));
    a.workspace = static_cast<double*>(workspace.data());
    if constexpr (kGpu) {
#if FASTIOU_WITH_CUDA
      // A bad sparse label turns the sums into NaN on the GPU (see
      // overlap_kernels.h); raising would need a synchronization every step.
      const std::string err = fastiou::overlap_stats_cuda(a, GpuStream(ctx));
      OP_REQUIRES(ctx, err.empty(), tensorflow::errors::Internal("fastiou: ", err));
#endif
    } else {
      const std::string err = fastiou::overlap_stats_cpu(a, ThreadPoolFor(ctx));
      OP_REQUIRES(ctx, err.empty(), InvalidArgument("fastiou: ", err));
    }
  }
};

template <bool kGpu>
class OverlapGradOp : public OverlapOpBase {
 public:
  explicit OverlapGradOp(OpKernelConstruction* ctx) : OverlapOpBase(ctx, true) {}

  void Compute(OpKernelContext* ctx) override {
    if constexpr (kGpu) OP_REQUIRES_OK(ctx, CheckDriver());
    fastiou::OverlapGeometry g;
    OP_REQUIRES_OK(ctx, ValidateInputs(ctx, &g));
    const TensorShape expected = StatsShape(attrs_, g);
    static const char* kNames[3] = {"grad_intersection", "grad_pred_sum", "grad_true_sum"};
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES(ctx, ctx->input(3 + i).shape() == expected,
                  InvalidArgument("fastiou: ", kNames[i], " shape ", ctx->input(3 + i).shape().DebugString(),
                                  " must be ", expected.DebugString()));
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(1).shape(), &out));
    fastiou::GradArgs a;
    FillInputs(ctx, g, &a);
    static_cast<fastiou::GradOnlyOptions&>(a) = attrs_;
    a.grad_intersection = ctx->input(3).data();
    a.grad_pred_sum = ctx->input(4).data();
    a.grad_true_sum = ctx->input(5).data();
    a.output = out->data();
    if constexpr (kGpu) {
#if FASTIOU_WITH_CUDA
      const std::string err = fastiou::overlap_grad_cuda(a, GpuStream(ctx));
      OP_REQUIRES(ctx, err.empty(), tensorflow::errors::Internal("fastiou: ", err));
#endif
    } else {
      const std::string err = fastiou::overlap_grad_cpu(a, ThreadPoolFor(ctx));
      OP_REQUIRES(ctx, err.empty(), InvalidArgument("fastiou: ", err));
    }
  }

};

REGISTER_KERNEL_BUILDER(Name("FastiouOverlapStats").Device(tensorflow::DEVICE_CPU), OverlapStatsOp<false>);
REGISTER_KERNEL_BUILDER(Name("FastiouOverlapGrad").Device(tensorflow::DEVICE_CPU), OverlapGradOp<false>);
#if FASTIOU_WITH_CUDA
REGISTER_KERNEL_BUILDER(Name("FastiouOverlapStats").Device(tensorflow::DEVICE_GPU), OverlapStatsOp<true>);
REGISTER_KERNEL_BUILDER(Name("FastiouOverlapGrad").Device(tensorflow::DEVICE_GPU), OverlapGradOp<true>);
#endif

}  // namespace fastiou_tf
