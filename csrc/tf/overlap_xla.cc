// XLA lowering of fastiou's TensorFlow ops: under jit_compile each op becomes
// a typed-FFI custom call to the fastiou XLA FFI handlers (csrc/xla), which
// run the same kernels as the OpKernels. Shapes and dtypes are checked here,
// at compile time; a bad label is reported at run time by the Host handler.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "tensorflow/compiler/tf2xla/shape_util.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/core/util/determinism.h"
#include "tf/overlap_attrs.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/overlap_ffi.h"
#include "xla/shape_util.h"

// Declared here: xla/ffi/ffi_api.h needs MLIR headers the wheel lacks.
namespace xla::ffi {
const XLA_FFI_Api* GetXlaFfiApi();
}

namespace fastiou_tf {
namespace {

using tensorflow::XlaOpKernel;
using tensorflow::XlaOpKernelContext;

// An option as an MLIR attribute value: booleans as `true`/`false`, integers
// as i64.
std::string MlirValue(bool v) { return v ? "true" : "false"; }
std::string MlirValue(int64_t v) { return std::to_string(v) + " : i64"; }
// A float as its bit pattern, which MLIR reads for f32 too, infinities included.
std::string MlirValue(float v) {
  uint32_t bits = 0;
  std::memcpy(&bits, &v, sizeof(bits));
  char text[32];
  std::snprintf(text, sizeof(text), "0x%08X : f32", static_cast<unsigned>(bits));
  return text;
}

// Adds option `name` = v to an MLIR dictionary under construction (an empty
// string before the first); ConfigEnd closes it.
template <typename T>
void AddConfig(std::string* s, const char* name, T v) {
  *s += std::string(s->empty() ? "{" : ", ") + name + " = " + MlirValue(v);
}
std::string ConfigEnd(const std::string& s) { return (s.empty() ? "{" : s) + "}"; }

// Every option of an X-macro list (core/overlap_options.h, core/confusion.h)
// of struct `from`, as backend config entries.
#define FASTIOU_XLA_ATTR(type, name, init, kind) AddConfig(&config, #name, static_cast<type>(from.name));

// The op's options as the handlers' backend config, an MLIR dictionary.
std::string BackendConfig(const OverlapAttrs& from, bool gradient) {
  std::string config;
  FASTIOU_OVERLAP_OPTIONS(FASTIOU_XLA_ATTR)
  if (gradient) {
    FASTIOU_GRAD_ONLY_OPTIONS(FASTIOU_XLA_ATTR)
  }
  return ConfigEnd(config);
}

std::string BackendConfig(const fastiou::ConfusionOptions& from) {
  std::string config;
  FASTIOU_CONFUSION_OPTIONS(FASTIOU_XLA_ATTR)
  return ConfigEnd(config);
}
#undef FASTIOU_XLA_ATTR

xla::PrimitiveType AccType(const OverlapAttrs& a) { return a.pred == tensorflow::DT_DOUBLE ? xla::F64 : xla::F32; }

xla::XlaOp Call(XlaOpKernelContext* ctx, const char* target, std::vector<xla::XlaOp> operands,
                const xla::Shape& shape, const std::string& config) {
  return xla::CustomCall(ctx->builder(), target, operands, shape, config,
                         /*has_side_effect=*/false, /*output_operand_aliasing=*/{}, /*literal=*/nullptr,
                         xla::CustomCallSchedule::SCHEDULE_NONE, xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
}

class OverlapStatsXlaOp : public XlaOpKernel {
 public:
  explicit OverlapStatsXlaOp(tensorflow::OpKernelConstruction* ctx) : XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadOverlapAttrs(ctx, false, &attrs_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    fastiou::OverlapGeometry g;
    OP_REQUIRES_OK(ctx, ValidateShapes(attrs_, ctx->InputShape(0), ctx->InputShape(1), ctx->InputShape(2), &g));
    const tensorflow::TensorShape out = StatsShape(attrs_, g);
    const xla::Shape sums = xla::ShapeUtil::MakeShape(AccType(attrs_), out.dim_sizes());
    const xla::XlaOp call = Call(ctx, "fastiou_overlap_stats", {ctx->Input(0), ctx->Input(1), ctx->Input(2)},
                                 xla::ShapeUtil::MakeTupleShape({sums, sums, sums}), BackendConfig(attrs_, false));
    for (int i = 0; i < 3; ++i) ctx->SetOutput(i, xla::GetTupleElement(call, i));
  }

 private:
  OverlapAttrs attrs_;
};

class OverlapGradXlaOp : public XlaOpKernel {
 public:
  explicit OverlapGradXlaOp(tensorflow::OpKernelConstruction* ctx) : XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadOverlapAttrs(ctx, true, &attrs_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    fastiou::OverlapGeometry g;
    OP_REQUIRES_OK(ctx, ValidateShapes(attrs_, ctx->InputShape(0), ctx->InputShape(1), ctx->InputShape(2), &g));
    const tensorflow::TensorShape expected = StatsShape(attrs_, g);
    static const char* kNames[3] = {"grad_intersection", "grad_pred_sum", "grad_true_sum"};
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES(ctx, ctx->InputShape(3 + i) == expected,
                  tensorflow::errors::InvalidArgument("fastiou: ", kNames[i], " shape ",
                                                      ctx->InputShape(3 + i).DebugString(), " must be ",
                                                      expected.DebugString()));
    }
    xla::Shape out;
    OP_REQUIRES_OK(ctx, tensorflow::TensorShapeToXLAShape(attrs_.pred, ctx->InputShape(1), &out));
    std::vector<xla::XlaOp> operands;
    for (int i = 0; i < 6; ++i) operands.push_back(ctx->Input(i));
    ctx->SetOutput(0, Call(ctx, "fastiou_overlap_grad", operands, out, BackendConfig(attrs_, true)));
  }

 private:
  OverlapAttrs attrs_;
};

// The confusion counts (core/confusion.h): one custom call; the shapes
// are checked here as the OpKernel checks them.
class ConfusionCountsXlaOp : public XlaOpKernel {
 public:
  explicit ConfusionCountsXlaOp(tensorflow::OpKernelConstruction* ctx) : XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadConfusionAttrs(ctx, &options_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    fastiou::ConfusionArgs a;
    static_cast<fastiou::ConfusionOptions&>(a) = options_;
    // Under TensorFlow's op determinism the CUDA handler refuses the counts
    // it cannot repeat bitwise, as the op does (the host handler ignores it).
    a.deterministic = a.deterministic || tensorflow::OpDeterminismRequired();
    const std::string err = fastiou::validate_confusion(ToShape(ctx->InputShape(0)), ToShape(ctx->InputShape(1)),
                                                        ToShape(ctx->InputShape(2)), &a);
    OP_REQUIRES(ctx, err.empty(), tensorflow::errors::InvalidArgument("fastiou: ", err));
    const xla::Shape counts = xla::ShapeUtil::MakeShape(xla::F64, {3, options_.num_classes});
    ctx->SetOutput(0, Call(ctx, "fastiou_confusion_counts", {ctx->Input(0), ctx->Input(1), ctx->Input(2)}, counts,
                           BackendConfig(static_cast<const fastiou::ConfusionOptions&>(a))));
  }

 private:
  fastiou::ConfusionOptions options_;
};

REGISTER_XLA_OP(Name("FastiouOverlapStats"), OverlapStatsXlaOp);
// On a GPU only where this library holds the CUDA kernel: elsewhere an XLA
// cluster on a GPU finds no lowering for the op rather than a custom call it
// cannot run.
#if FASTIOU_WITH_CUDA
REGISTER_XLA_OP(Name("FastiouConfusionCounts"), ConfusionCountsXlaOp);
#else
REGISTER_XLA_OP(Name("FastiouConfusionCounts").Device(tensorflow::DEVICE_CPU_XLA_JIT), ConfusionCountsXlaOp);
#endif
REGISTER_XLA_OP(Name("FastiouOverlapGrad"), OverlapGradXlaOp);

}  // namespace
}  // namespace fastiou_tf

XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "fastiou_overlap_stats", "Host",
                         fastiou_xla::FastiouOverlapStatsHost);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "fastiou_overlap_grad", "Host",
                         fastiou_xla::FastiouOverlapGradHost);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "fastiou_confusion_counts", "Host",
                         fastiou_xla::FastiouConfusionCountsHost);
#if FASTIOU_WITH_CUDA
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "fastiou_overlap_stats", "CUDA",
                         fastiou_xla::FastiouOverlapStatsCuda);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "fastiou_overlap_grad", "CUDA",
                         fastiou_xla::FastiouOverlapGradCuda);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), "fastiou_confusion_counts", "CUDA",
                         fastiou_xla::FastiouConfusionCountsCuda);
#endif

// Lets Python ask whether this op library lowers its ops under XLA.
extern "C" int fastiou_has_xla_kernels() { return 1; }
