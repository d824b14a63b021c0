#include <algorithm>

#include "core/overlap_kernels.h"

namespace fastiou {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kBool: return "bool";
    case DType::kUInt8: return "uint8";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
  }
  return "unknown";
}

int64_t OverlapGeometry::chunk_pixels() const {
  return std::max<int64_t>(1, kChunkElements / std::max<int64_t>(1, channels));
}

int64_t OverlapGeometry::chunks_per_image() const {
  const int64_t cp = chunk_pixels();
  return (pixels + cp - 1) / cp;
}

int64_t stats_workspace_doubles(const OverlapGeometry& geometry) {
  return geometry.chunks() * geometry.channels * 3;
}

ParallelFor serial_parallel_for() {
  return [](int64_t units, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    if (units > 0) fn(0, units);
  };
}

}  // namespace fastiou
