// The TensorFlow op of fastiou's IoU metrics: the confusion counts
// (core/confusion.h) of one batch, in one pass over the masks, with a CPU
// and a GPU kernel.
#include <string>

#include "core/confusion.h"
#include "tf/overlap_attrs.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/determinism.h"

namespace fastiou_tf {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::InferenceContext;

#define FASTIOU_CLASS_TYPES "{bool, uint8, int32, int64, half, bfloat16, float, double}"

REGISTER_OP("FastiouConfusionCounts")
    .Input("y_true: Ttrue")
    .Input("y_pred: Tpred")
    .Input("weights: Tw")
    .Output("counts: double")
    .Attr("Ttrue: " FASTIOU_CLASS_TYPES)
    .Attr("Tpred: " FASTIOU_CLASS_TYPES)
    .Attr("Tw: {float, double}")
    FASTIOU_CONFUSION_OPTIONS(FASTIOU_TF_ATTR)
    .SetShapeFn([](InferenceContext* c) {
      int64_t num_classes = 0;
      TF_RETURN_IF_ERROR(c->GetAttr("num_classes", &num_classes));
      c->set_output(0, c->Matrix(3, num_classes));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Confusion counts of a batch for IoU metrics, in one pass: y_true [batch,
pixels, true channels] and y_pred [batch, pixels, pred channels] give each
pixel a target and a predicted class (a class index, the argmax over the
channels, or y_pred >= threshold); counts[0] holds per class the weight of the
pixels whose two classes are that class, counts[1] of those whose target is,
counts[2] of those whose prediction is. weights [1 or batch, 1 or pixels].
)doc");

// The counts of one batch: the C++ kernel on TensorFlow's intra-op thread
// pool (kGpu false), or the CUDA kernel on the op's stream.
template <bool kGpu>
class ConfusionCountsOp : public OpKernel {
 public:
  explicit ConfusionCountsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadConfusionAttrs(ctx, &options_));
  }

  void Compute(OpKernelContext* ctx) override {
    fastiou::ConfusionArgs a;
    static_cast<fastiou::ConfusionOptions&>(a) = options_;
    const std::string err = fastiou::validate_confusion(ToShape(ctx->input(0).shape()), ToShape(ctx->input(1).shape()),
                                                        ToShape(ctx->input(2).shape()), &a);
    OP_REQUIRES(ctx, err.empty(), InvalidArgument("fastiou: ", err));
    a.true_dtype = ToDType(ctx->input(0).dtype());
    a.pred_dtype = ToDType(ctx->input(1).dtype());
    a.weight_dtype = ToDType(ctx->input(2).dtype());
    a.y_true = ctx->input(0).data();
    a.y_pred = ctx->input(1).data();
    a.weights = ctx->input(2).data();
    const std::string input = fastiou::confusion_input_problem(a);
    OP_REQUIRES(ctx, input.empty(), InvalidArgument("fastiou: ", input));
    Tensor* counts = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({3, a.num_classes}), &counts));
    a.counts = static_cast<double*>(counts->data());
    if constexpr (kGpu) {
#if FASTIOU_WITH_CUDA
      a.deterministic = a.deterministic || tensorflow::OpDeterminismRequired();
      const std::string refused = fastiou::confusion_determinism_problem(a);
      OP_REQUIRES(ctx, refused.empty(), tensorflow::errors::Unimplemented("fastiou: ", refused));
      OP_REQUIRES_OK(ctx, CudaDriverStatus());
      Tensor workspace;
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_DOUBLE,
                                             TensorShape({fastiou::confusion_workspace_doubles_cuda(a)}), &workspace));
      a.workspace = static_cast<double*>(workspace.data());
      const std::string run = fastiou::confusion_counts_cuda(a, GpuStream(ctx));
      OP_REQUIRES(ctx, run.empty(), tensorflow::errors::Internal("fastiou: ", run));
#endif
    } else {
      Tensor workspace;
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_DOUBLE,
                                             TensorShape({fastiou::confusion_workspace_doubles(a)}), &workspace));
      a.workspace = static_cast<double*>(workspace.data());
      const std::string run = fastiou::confusion_counts_cpu(a, ThreadPoolFor(ctx));
      OP_REQUIRES(ctx, run.empty(), InvalidArgument("fastiou: ", run));
    }
  }

 private:
  fastiou::ConfusionOptions options_;
};

REGISTER_KERNEL_BUILDER(Name("FastiouConfusionCounts").Device(tensorflow::DEVICE_CPU), ConfusionCountsOp<false>);
#if FASTIOU_WITH_CUDA
REGISTER_KERNEL_BUILDER(Name("FastiouConfusionCounts").Device(tensorflow::DEVICE_GPU), ConfusionCountsOp<true>);
#endif

}  // namespace fastiou_tf
