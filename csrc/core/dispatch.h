// Maps runtime dtypes and flags to kernel template instantiations.
#pragma once

#include <string>
#include <type_traits>
#include <utility>

#include "core/overlap_kernels.h"
#include "core/overlap_math.h"

namespace fastiou {

template <typename F>
void dispatch_bool(bool flag, F&& f) {
  if (flag) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// Calls f(T{}) with the storage type of a prediction dtype; false if the dtype
// is not one.
template <typename F>
bool dispatch_pred_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat16: f(f16_t{}); return true;
    case DType::kBFloat16: f(bf16_t{}); return true;
    case DType::kFloat32: f(float{}); return true;
    case DType::kFloat64: f(double{}); return true;
    default: return false;
  }
}

// kBoolAsByte reads bool targets through uint8_t (a bool is stored as one byte
// holding 0 or 1), which spares the CUDA build a set of instantiations.
template <bool kBoolAsByte = false, typename F>
bool dispatch_label_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kBool:
      if constexpr (kBoolAsByte) {
        f(uint8_t{});
      } else {
        f(bool{});
      }
      return true;
    case DType::kUInt8: f(uint8_t{}); return true;
    case DType::kInt32: f(int32_t{}); return true;
    case DType::kInt64: f(int64_t{}); return true;
    default: return dispatch_pred_dtype(dtype, std::forward<F>(f));
  }
}

// Runs Kernel<TP, TT>::run(args...) for the prediction and target dtypes.
template <template <typename, typename> class Kernel, bool kBoolAsByte = false, typename... Args>
std::string dispatch_pred_true(DType pred, DType tru, Args&&... args) {
  bool ran = false;
  dispatch_pred_dtype(pred, [&](auto p) {
    dispatch_label_dtype<kBoolAsByte>(tru, [&](auto t) {
      Kernel<decltype(p), decltype(t)>::run(args...);
      ran = true;
    });
  });
  if (ran) return std::string();
  return std::string("unsupported dtypes: y_pred ") + dtype_name(pred) + ", y_true " +
         dtype_name(tru);
}

// Runs Kernel<TP, TT>::run(args, context, &error) for the dtypes of args and
// returns the kernel's error, or the dispatch error for an unsupported pair.
template <template <typename, typename> class Kernel, bool kBoolAsByte = false, typename Args,
          typename Context>
std::string run_for_dtypes(const Args& args, const Context& context) {
  std::string error;
  const std::string dispatch =
      dispatch_pred_true<Kernel, kBoolAsByte>(args.pred_dtype, args.true_dtype, args, context, &error);
  return dispatch.empty() ? error : dispatch;
}

}  // namespace fastiou
