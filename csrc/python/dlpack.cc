// DLPack exchange of fastiou._fastiou_kernels: see dlpack.h.
#include "python/dlpack.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>

namespace fastiou_py {

std::optional<DType> from_dl(DLDataType t) {
  if (t.lanes != 1) return std::nullopt;
  switch (t.code) {
    case kDLBool: return t.bits == 8 ? std::optional<DType>(DType::kBool) : std::nullopt;
    case kDLUInt: return t.bits == 8 ? std::optional<DType>(DType::kUInt8) : std::nullopt;
    case kDLInt:
      if (t.bits == 32) return DType::kInt32;
      if (t.bits == 64) return DType::kInt64;
      return std::nullopt;
    case kDLFloat:
      if (t.bits == 16) return DType::kFloat16;
      if (t.bits == 32) return DType::kFloat32;
      if (t.bits == 64) return DType::kFloat64;
      return std::nullopt;
    case kDLBfloat: return t.bits == 16 ? std::optional<DType>(DType::kBFloat16) : std::nullopt;
    default: return std::nullopt;
  }
}

DLDataType to_dl(DType d) {
  switch (d) {
    case DType::kBool: return {kDLBool, 8, 1};
    case DType::kUInt8: return {kDLUInt, 8, 1};
    case DType::kInt32: return {kDLInt, 32, 1};
    case DType::kInt64: return {kDLInt, 64, 1};
    case DType::kFloat16: return {kDLFloat, 16, 1};
    case DType::kBFloat16: return {kDLBfloat, 16, 1};
    case DType::kFloat32: return {kDLFloat, 32, 1};
    case DType::kFloat64: return {kDLFloat, 64, 1};
  }
  return {kDLFloat, 32, 1};
}

int64_t dtype_size(DType d) {
  switch (d) {
    case DType::kBool:
    case DType::kUInt8: return 1;
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    case DType::kInt32:
    case DType::kFloat32: return 4;
    case DType::kInt64:
    case DType::kFloat64: return 8;
  }
  return 4;
}

#if FASTIOU_WITH_CUDA
void check_cuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  forget_cuda_error(err);
  throw std::runtime_error(std::string("fastiou: ") + what + ": " + cudaGetErrorString(err));
}

DeviceGuard::DeviceGuard(int device, OnError on_error) {
  const char* what = "cudaGetDevice";
  cudaError_t err = cudaGetDevice(&previous_);
  if (err == cudaSuccess && device != previous_) {
    what = "cudaSetDevice";
    err = cudaSetDevice(device);
    changed_ = err == cudaSuccess;
  }
  if (on_error == OnError::kRaise) {
    check_cuda(err, what);
  } else {
    forget_cuda_error(err);
  }
}

DeviceGuard::~DeviceGuard() noexcept {
  if (changed_) forget_cuda_error(cudaSetDevice(previous_));
}

void stream_wait(cudaStream_t earlier, cudaStream_t later) {
  if (earlier == later) return;
  cudaEvent_t event;
  check_cuda(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
  cudaError_t err = cudaEventRecord(event, earlier);
  if (err == cudaSuccess) err = cudaStreamWaitEvent(later, event, 0);
  cudaEventDestroy(event);
  check_cuda(err, "ordering the consumer's stream after fastiou's");
}

namespace {
// Gives device memory back after the work its last consumer enqueued so far.
// Every error is ignored: when the streams cannot be ordered (the consumer
// destroyed its stream, or the context is broken) it waits for the whole
// device instead and frees on the legacy default stream.
void free_device_memory(void* data, int device, cudaStream_t stream, cudaStream_t last_user) noexcept {
  DeviceGuard guard(device, DeviceGuard::OnError::kIgnore);
  cudaError_t err = cudaSuccess;
  if (last_user != stream) {
    cudaEvent_t event = nullptr;
    err = cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
    if (err == cudaSuccess) err = cudaEventRecord(event, last_user);
    if (err == cudaSuccess) err = cudaStreamWaitEvent(stream, event, 0);
    if (event) cudaEventDestroy(event);
  }
  if (err == cudaSuccess) err = cudaFreeAsync(data, stream);
  if (err == cudaSuccess) return;
  forget_cuda_error(err);
  forget_cuda_error(cudaDeviceSynchronize());
  forget_cuda_error(cudaFreeAsync(data, cudaStreamLegacy));
}
}  // namespace
#endif

#if FASTIOU_WITH_CUDA
cudaMemPool_t memory_pool(int device) {
  static std::mutex mutex;
  static std::map<int, cudaMemPool_t>* pools = new std::map<int, cudaMemPool_t>();  // never destroyed
  std::lock_guard<std::mutex> lock(mutex);
  const auto found = pools->find(device);
  if (found != pools->end()) return found->second;
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.handleTypes = cudaMemHandleTypeNone;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t pool = nullptr;
  check_cuda(cudaMemPoolCreate(&pool, &props), "cudaMemPoolCreate");
  unsigned long long keep = ~0ull;
  check_cuda(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute");
  (*pools)[device] = pool;
  return pool;
}
#endif

Storage::Storage(int64_t bytes, DLDevice dev, uintptr_t s) : device(dev), stream(s), last_user(s) {
  const size_t n = static_cast<size_t>(std::max<int64_t>(bytes, 1));
  if (!is_cuda(device.device_type)) {
    data = std::aligned_alloc(64, (n + 63) / 64 * 64);
    if (!data) throw std::bad_alloc();
    return;
  }
#if FASTIOU_WITH_CUDA
  DeviceGuard guard(device.device_id);
  check_cuda(cudaMallocFromPoolAsync(&data, n, memory_pool(device.device_id), reinterpret_cast<cudaStream_t>(stream)),
             "cudaMallocFromPoolAsync");
#endif
}

Storage::~Storage() noexcept {
  if (!is_cuda(device.device_type)) {
    std::free(data);
    return;
  }
#if FASTIOU_WITH_CUDA
  if (data) {
    free_device_memory(data, device.device_id, reinterpret_cast<cudaStream_t>(stream),
                       reinterpret_cast<cudaStream_t>(last_user));
  }
#endif
}

Buffer::Buffer(std::vector<int64_t> shape, DType dtype, DLDevice device, uintptr_t stream)
    : shape_(std::move(shape)), dtype_(dtype) {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  storage_ = std::make_shared<Storage>(n * dtype_size(dtype_), device, stream);
}

py::tuple Buffer::dlpack_device() const {
  return py::make_tuple(storage_->device.device_type, storage_->device.device_id);
}

namespace {
struct ExportContext {
  std::shared_ptr<Storage> storage;
  std::vector<int64_t> shape;
};

void delete_exported(DLManagedTensor* self) noexcept {
  delete static_cast<ExportContext*>(self->manager_ctx);
  delete self;
}

// The capsule's destructor: frees the tensor unless a consumer took it.
void delete_unconsumed_capsule(PyObject* capsule) noexcept {
  if (PyCapsule_IsValid(capsule, "dltensor")) {
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
    if (m && m->deleter) m->deleter(m);
  } else {
    PyErr_Clear();
  }
}
}  // namespace

py::capsule Buffer::dlpack(py::object stream, py::object, py::object, py::object) {
#if FASTIOU_WITH_CUDA
  if (is_cuda(storage_->device.device_type) && !stream.is_none()) {
    const int64_t s = stream.cast<int64_t>();
    if (s != -1) {
      DeviceGuard guard(storage_->device.device_id);
      const uintptr_t consumer = static_cast<uintptr_t>(s);
      stream_wait(reinterpret_cast<cudaStream_t>(storage_->stream), reinterpret_cast<cudaStream_t>(consumer));
      storage_->last_user = consumer;
    }
  }
#else
  (void)stream;
#endif
  auto ctx = std::make_unique<ExportContext>(ExportContext{storage_, shape_});
  auto managed = std::make_unique<DLManagedTensor>();
  managed->dl_tensor.data = storage_->data;
  managed->dl_tensor.device = storage_->device;
  managed->dl_tensor.ndim = static_cast<int32_t>(shape_.size());
  managed->dl_tensor.dtype = to_dl(dtype_);
  managed->dl_tensor.shape = ctx->shape.data();
  managed->dl_tensor.strides = nullptr;
  managed->dl_tensor.byte_offset = 0;
  managed->manager_ctx = ctx.release();
  managed->deleter = &delete_exported;
  DLManagedTensor* raw = managed.get();
  try {
    py::capsule capsule(raw, "dltensor", &delete_unconsumed_capsule);
    managed.release();
    return capsule;
  } catch (...) {
    delete_exported(managed.release());
    throw;
  }
}

Imported::Imported(const py::handle& obj, const char* name, std::optional<uintptr_t> stream)
    : name_(name), owner_(py::reinterpret_borrow<py::object>(obj)) {
  if (!py::hasattr(obj, "__dlpack__")) {
    throw py::type_error(std::string("fastiou: ") + name + " must be an array with __dlpack__ (NumPy, CuPy, "
                         "PyTorch, JAX, ...), got " + std::string(py::str(py::type::of(obj))));
  }
  // Ask for a versioned capsule first; producers that predate DLPack 1.0
  // reject max_version with a TypeError.
  py::dict kwargs;
  if (stream) kwargs["stream"] = *stream == 0 ? uintptr_t(1) : *stream;  // 1: the legacy default stream
  py::object capsule;
  try {
    py::dict versioned;
    for (auto item : kwargs) versioned[item.first] = item.second;
    versioned["max_version"] = py::make_tuple(1, 0);
    capsule = obj.attr("__dlpack__")(**versioned);
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) throw;
    capsule = obj.attr("__dlpack__")(**kwargs);
  }
  PyObject* cap = capsule.ptr();
  if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
    versioned_ = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap, "dltensor_versioned"));
    PyCapsule_SetName(cap, "used_dltensor_versioned");  // ours now: we call its deleter
    tensor_ = &versioned_->dl_tensor;
  } else if (PyCapsule_IsValid(cap, "dltensor")) {
    managed_ = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
    PyCapsule_SetName(cap, "used_dltensor");
    tensor_ = &managed_->dl_tensor;
  } else {
    throw py::type_error(std::string("fastiou: ") + name + ".__dlpack__() did not return a DLPack capsule");
  }
  try {
    check(*tensor_);
  } catch (...) {
    release();
    throw;
  }
}

Imported::~Imported() noexcept { release(); }

void Imported::release() noexcept {
  if (managed_ && managed_->deleter) managed_->deleter(managed_);
  if (versioned_ && versioned_->deleter) versioned_->deleter(versioned_);
  managed_ = nullptr;
  versioned_ = nullptr;
  owner_ = py::object();
}

void Imported::check(const DLTensor& t) {
  const char* name = name_;
  shape_.assign(t.shape, t.shape + t.ndim);
  const auto dtype = from_dl(t.dtype);
  if (!dtype) {
    throw py::type_error(std::string("fastiou: ") + name + " has an unsupported dtype (DLPack code " +
                         std::to_string(t.dtype.code) + ", " + std::to_string(t.dtype.bits) + " bits)");
  }
  dtype_ = *dtype;
  const bool empty = std::find(shape_.begin(), shape_.end(), int64_t(0)) != shape_.end();
  if (t.strides && !empty) {
    int64_t expected = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      if (t.shape[d] != 1 && t.strides[d] != expected) {
        throw py::value_error(std::string("fastiou: ") + name + " must be contiguous (row-major)");
      }
      expected *= t.shape[d];
    }
  }
  if (t.device.device_type != kDLCPU && !is_cuda(t.device.device_type)) {
    throw py::value_error(std::string("fastiou: ") + name + " lives on an unsupported device (DLPack type " +
                          std::to_string(t.device.device_type) + ")");
  }
}

DLDevice device_of(const py::handle& obj, const char* name) {
  if (!py::hasattr(obj, "__dlpack_device__")) {
    throw py::type_error(std::string("fastiou: ") + name + " must be an array with __dlpack__ (NumPy, CuPy, "
                         "PyTorch, JAX, ...), got " + std::string(py::str(py::type::of(obj))));
  }
  const py::tuple d = obj.attr("__dlpack_device__")();
  return DLDevice{d[0].cast<int32_t>(), d[1].cast<int32_t>()};
}

}  // namespace fastiou_py
