// The DLPack exchange of fastiou._fastiou_kernels: arrays taken in from any
// framework (Imported) and the arrays fastiou writes (Buffer), plus the CUDA
// helpers they share with the rest of the module.
//
// Destructors and DLPack/capsule deleters here never throw and call only CUDA
// functions whose errors they ignore: they run when a framework lets go of an
// array, possibly after a CUDA error or after the consumer's stream is gone,
// and an exception there would end the process.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/overlap_kernels.h"

#if FASTIOU_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace fastiou_py {

namespace py = pybind11;
using fastiou::DType;

// --- DLPack ABI, from the DLPack specification (unversioned "dltensor" capsule).
enum DLDeviceType : int32_t { kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13 };
enum DLDataTypeCode : uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4, kDLBool = 6 };
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};
// DLPack >= 1.0 ("dltensor_versioned"): can say read-only, which NumPy needs
// to export a read-only array.
struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
};

std::optional<DType> from_dl(DLDataType t);
DLDataType to_dl(DType d);
int64_t dtype_size(DType d);
inline bool is_cuda(int32_t device_type) { return device_type == kDLCUDA || device_type == kDLCUDAManaged; }

#if FASTIOU_WITH_CUDA
// Raises "fastiou: <what>: <CUDA's message>" on an error.
void check_cuda(cudaError_t err, const char* what);

// fastiou's stream-ordered memory pool on a device, made on first use: the
// outputs and workspaces of fastiou.kernels come from it. It keeps the memory
// it is given back for the next call (as PyTorch's caching allocator does)
// rather than returning it to the driver at every synchronization, which
// would map a gradient-sized block afresh on every call.
cudaMemPool_t memory_pool(int device);

// Clears the calling thread's last CUDA error after one of fastiou's own calls
// failed, so that the framework's next error check does not report it as its
// own. Sticky errors (a broken context) stay: CUDA cannot clear them.
inline void forget_cuda_error(cudaError_t err) noexcept {
  if (err != cudaSuccess && err != cudaErrorNotReady) cudaGetLastError();
}

// Makes `device` current for the scope. kRaise raises if CUDA refuses;
// kIgnore (destructors and deleters) never raises and ignores errors.
class DeviceGuard {
 public:
  enum class OnError { kRaise, kIgnore };
  explicit DeviceGuard(int device, OnError on_error = OnError::kRaise);
  ~DeviceGuard() noexcept;
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

// Orders `later` after the work enqueued so far on `earlier`; raises on an error.
void stream_wait(cudaStream_t earlier, cudaStream_t later);
#endif

// Memory fastiou allocated: host memory, or device memory from the stream-
// ordered allocator, given back on the stream that last used it.
struct Storage {
  void* data = nullptr;
  DLDevice device{kDLCPU, 0};
  uintptr_t stream = 0;     // stream it was allocated (and is freed) on
  uintptr_t last_user = 0;  // stream of the last consumer

  Storage(int64_t bytes, DLDevice dev, uintptr_t s);
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() noexcept;
};

// An output array: exported to frameworks through __dlpack__.
class Buffer {
 public:
  Buffer(std::vector<int64_t> shape, DType dtype, DLDevice device, uintptr_t stream);

  void* data() const { return storage_->data; }
  const std::vector<int64_t>& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  DLDevice device() const { return storage_->device; }
  uintptr_t stream() const { return storage_->stream; }

  py::tuple dlpack_device() const;
  // The Python array API's __dlpack__: the consumer's stream waits for the
  // work that wrote this buffer. max_version, dl_device and copy are accepted
  // and need nothing: fastiou exports an unversioned capsule on the buffer's
  // own device, without a copy.
  py::capsule dlpack(py::object stream, py::object, py::object, py::object);

 private:
  std::vector<int64_t> shape_;
  DType dtype_;
  std::shared_ptr<Storage> storage_;
};

// An input array taken in through __dlpack__. It holds the producer's array
// (the Python object and the DLPack managed tensor, whose deleter releases the
// producer's memory) until it goes away; for CUDA inputs that is after the
// kernels reading it ran (see pending.h).
class Imported {
 public:
  // `stream`: the stream the kernels will read the array on (CUDA arrays),
  // passed to the producer's __dlpack__ so that it orders its writes first.
  Imported(const py::handle& obj, const char* name, std::optional<uintptr_t> stream);
  Imported(const Imported&) = delete;
  Imported& operator=(const Imported&) = delete;
  ~Imported() noexcept;  // needs the GIL: calls the producer's deleter

  const void* data() const { return static_cast<const char*>(tensor_->data) + tensor_->byte_offset; }
  const std::vector<int64_t>& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  DLDevice device() const { return tensor_->device; }
  const char* name() const { return name_; }

 private:
  void release() noexcept;
  void check(const DLTensor& t);

  const char* name_;
  py::object owner_;  // the producer's array object
  DLManagedTensor* managed_ = nullptr;
  DLManagedTensorVersioned* versioned_ = nullptr;
  const DLTensor* tensor_ = nullptr;
  std::vector<int64_t> shape_;
  DType dtype_ = DType::kFloat32;
};

// The device of an array, from __dlpack_device__, before importing it.
DLDevice device_of(const py::handle& obj, const char* name);

}  // namespace fastiou_py
