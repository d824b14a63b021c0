// fastiou._fastiou_kernels: the overlap kernels on DLPack arrays, with no
// framework behind them. NumPy arrays run the C++ kernels; CUDA arrays (CuPy,
// PyTorch, JAX, ...) run the CUDA kernels on the stream the caller names.
// Outputs are Buffers that any framework takes in with its from_dlpack.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/overlap_kernels.h"

#if FASTIOU_WITH_CUDA
#include <cuda_runtime.h>
#endif
#if FASTIOU_WITH_FFI
#include "xla/overlap_ffi.h"
#endif

namespace py = pybind11;

namespace fastiou_py {

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

using fastiou::DType;

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

bool is_cuda(int32_t device_type) { return device_type == kDLCUDA || device_type == kDLCUDAManaged; }

#if FASTIOU_WITH_CUDA
void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("fastiou: ") + what + ": " + cudaGetErrorString(err));
}

// Makes `device` current for the scope.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) check_cuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

// Orders `later` after the work enqueued so far on `earlier`.
void stream_wait(cudaStream_t earlier, cudaStream_t later) {
  if (earlier == later) return;
  cudaEvent_t event;
  check_cuda(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
  check_cuda(cudaEventRecord(event, earlier), "cudaEventRecord");
  check_cuda(cudaStreamWaitEvent(later, event, 0), "cudaStreamWaitEvent");
  cudaEventDestroy(event);
}
#endif

// Memory fastiou allocated: host memory, or device memory from the stream-
// ordered allocator, given back on the stream that last used it.
struct Storage {
  void* data = nullptr;
  DLDevice device{kDLCPU, 0};
  uintptr_t stream = 0;      // stream it was allocated (and is freed) on
  uintptr_t last_user = 0;   // stream of the last consumer

  Storage(int64_t bytes, DLDevice dev, uintptr_t s) : device(dev), stream(s), last_user(s) {
    const size_t n = static_cast<size_t>(std::max<int64_t>(bytes, 1));
    if (!is_cuda(device.device_type)) {
      data = std::aligned_alloc(64, (n + 63) / 64 * 64);
      if (!data) throw std::bad_alloc();
      return;
    }
#if FASTIOU_WITH_CUDA
    DeviceGuard guard(device.device_id);
    check_cuda(cudaMallocAsync(&data, n, reinterpret_cast<cudaStream_t>(stream)), "cudaMallocAsync");
#endif
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    if (!is_cuda(device.device_type)) {
      std::free(data);
      return;
    }
#if FASTIOU_WITH_CUDA
    DeviceGuard guard(device.device_id);
    auto s = reinterpret_cast<cudaStream_t>(stream);
    stream_wait(reinterpret_cast<cudaStream_t>(last_user), s);
    cudaFreeAsync(data, s);
#endif
  }
};

// An output array: exported to frameworks through __dlpack__.
class Buffer {
 public:
  Buffer(std::vector<int64_t> shape, DType dtype, DLDevice device, uintptr_t stream)
      : shape_(std::move(shape)), dtype_(dtype) {
    int64_t n = 1;
    for (int64_t d : shape_) n *= d;
    storage_ = std::make_shared<Storage>(n * dtype_size(dtype_), device, stream);
  }

  void* data() const { return storage_->data; }
  const std::vector<int64_t>& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  DLDevice device() const { return storage_->device; }
  uintptr_t stream() const { return storage_->stream; }

  py::tuple dlpack_device() const { return py::make_tuple(storage_->device.device_type, storage_->device.device_id); }

  // The Python array API's __dlpack__: the consumer's stream waits for the
  // work that wrote this buffer.
  // max_version, dl_device and copy are accepted and need nothing: fastiou
  // exports an unversioned capsule on the buffer's own device, without a copy.
  py::capsule dlpack(py::object stream, py::object, py::object, py::object) {
#if FASTIOU_WITH_CUDA
    if (is_cuda(storage_->device.device_type) && !stream.is_none()) {
      const int64_t s = stream.cast<int64_t>();
      if (s != -1) {
        DeviceGuard guard(storage_->device.device_id);
        const uintptr_t consumer = static_cast<uintptr_t>(s);
        stream_wait(reinterpret_cast<cudaStream_t>(storage_->stream),
                    reinterpret_cast<cudaStream_t>(consumer));
        storage_->last_user = consumer;
      }
    }
#else
    (void)stream;
#endif
    struct Context {
      std::shared_ptr<Storage> storage;
      std::vector<int64_t> shape;
    };
    auto* ctx = new Context{storage_, shape_};
    auto* managed = new DLManagedTensor{};
    managed->dl_tensor.data = storage_->data;
    managed->dl_tensor.device = storage_->device;
    managed->dl_tensor.ndim = static_cast<int32_t>(shape_.size());
    managed->dl_tensor.dtype = to_dl(dtype_);
    managed->dl_tensor.shape = ctx->shape.data();
    managed->dl_tensor.strides = nullptr;
    managed->dl_tensor.byte_offset = 0;
    managed->manager_ctx = ctx;
    managed->deleter = [](DLManagedTensor* self) {
      delete static_cast<Context*>(self->manager_ctx);
      delete self;
    };
    return py::capsule(managed, "dltensor", [](PyObject* capsule) {
      // Not taken by a consumer: free it here.
      if (PyCapsule_IsValid(capsule, "dltensor")) {
        auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
        if (m && m->deleter) m->deleter(m);
      } else {
        PyErr_Clear();
      }
    });
  }

 private:
  std::vector<int64_t> shape_;
  DType dtype_;
  std::shared_ptr<Storage> storage_;
};

// An input array taken in through __dlpack__; released when this goes away.
class Imported {
 public:
  Imported(const py::handle& obj, const char* name, std::optional<uintptr_t> stream) : name_(name) {
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
  Imported(const Imported&) = delete;
  Imported& operator=(const Imported&) = delete;
  ~Imported() { release(); }

  const void* data() const { return static_cast<const char*>(tensor_->data) + tensor_->byte_offset; }
  const std::vector<int64_t>& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  DLDevice device() const { return tensor_->device; }
  const char* name() const { return name_; }

 private:
  void release() {
    if (managed_ && managed_->deleter) managed_->deleter(managed_);
    if (versioned_ && versioned_->deleter) versioned_->deleter(versioned_);
    managed_ = nullptr;
    versioned_ = nullptr;
  }

  void check(const DLTensor& t) {
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

  const char* name_;
  DLManagedTensor* managed_ = nullptr;
  DLManagedTensorVersioned* versioned_ = nullptr;
  const DLTensor* tensor_ = nullptr;
  std::vector<int64_t> shape_;
  DType dtype_ = DType::kFloat32;
};

// The device of an array, from __dlpack_device__, before importing it.
DLDevice device_of(const py::handle& obj, const char* name) {
  if (!py::hasattr(obj, "__dlpack_device__")) {
    throw py::type_error(std::string("fastiou: ") + name + " must be an array with __dlpack__ (NumPy, CuPy, "
                         "PyTorch, JAX, ...), got " + std::string(py::str(py::type::of(obj))));
  }
  const py::tuple d = obj.attr("__dlpack_device__")();
  return DLDevice{d[0].cast<int32_t>(), d[1].cast<int32_t>()};
}

// Runs the CPU kernels on std::threads; results do not depend on the split.
fastiou::ParallelFor thread_parallel_for() {
  return [](int64_t units, int64_t cost, const std::function<void(int64_t, int64_t)>& fn) {
    if (units <= 0) return;
    const int64_t hw = std::max<unsigned>(1, std::thread::hardware_concurrency());
    // Below about a million cycles of work, threads cost more than they save.
    const int64_t by_cost = std::max<int64_t>(1, units * std::max<int64_t>(cost, 1) / 1000000);
    const int64_t n = std::min({hw, units, by_cost});
    if (n == 1) {
      fn(0, units);
      return;
    }
    std::vector<std::thread> threads;
    for (int64_t k = 0; k < n; ++k) {
      threads.emplace_back([&, k] { fn(units * k / n, units * (k + 1) / n); });
    }
    for (auto& t : threads) t.join();
  };
}

struct Options {
  bool from_logits;
  bool per_image;
  bool softmax;
  bool sparse;
  std::optional<int64_t> ignore_index;
};

// Everything both entry points check and derive from their common inputs.
struct Call {
  std::unique_ptr<Imported> y_true, y_pred, weights;
  DLDevice device{kDLCPU, 0};
  uintptr_t stream = 0;
  fastiou::OverlapInputs inputs;

  Call(const py::handle& t, const py::handle& p, const py::handle& w, const Options& o,
       std::optional<uintptr_t> stream_arg) {
    device = device_of(p, "y_pred");
    const bool cuda = is_cuda(device.device_type);
    if (cuda) {
#if !FASTIOU_WITH_CUDA
      throw py::value_error("fastiou: y_pred is a CUDA array but this build of fastiou has no CUDA kernels "
                            "(fastiou.built_with_cuda() is False)");
#endif
      stream = stream_arg.value_or(0);
    }
    const std::optional<uintptr_t> export_stream = cuda ? std::optional<uintptr_t>(stream) : std::nullopt;
    y_pred = std::make_unique<Imported>(p, "y_pred", export_stream);
    y_true = std::make_unique<Imported>(t, "y_true", export_stream);
    if (!w.is_none()) weights = std::make_unique<Imported>(w, "weights", export_stream);
    same_device(*y_true);
    if (weights) same_device(*weights);

    const DType pd = y_pred->dtype();
    if (pd != DType::kFloat16 && pd != DType::kBFloat16 && pd != DType::kFloat32 && pd != DType::kFloat64) {
      throw py::type_error(std::string("fastiou: y_pred must be float16, bfloat16, float32 or float64, got ") +
                           fastiou::dtype_name(pd));
    }
    const DType td = y_true->dtype();
    if (o.sparse && td != DType::kUInt8 && td != DType::kInt32 && td != DType::kInt64) {
      throw py::type_error(std::string("fastiou: sparse labels (class indices) must be uint8, int32 or int64, got ") +
                           fastiou::dtype_name(td));
    }
    if (weights && weights->dtype() != pd) {
      throw py::type_error(std::string("fastiou: weights must have y_pred's dtype ") + fastiou::dtype_name(pd) +
                           ", got " + fastiou::dtype_name(weights->dtype()));
    }
    if (o.ignore_index && !o.sparse) throw py::value_error("fastiou: ignore_index needs sparse labels (class indices)");

    fastiou::LabelOptions labels;
    labels.softmax = o.softmax;
    labels.sparse = o.sparse;
    labels.has_ignore = o.ignore_index.has_value();
    labels.ignore_index = o.ignore_index.value_or(0);
    fastiou::OverlapGeometry g;
    const std::string err = fastiou::validate_overlap_shapes(
        y_pred->shape(), y_true->shape(), weights ? &weights->shape() : nullptr, labels, &g);
    if (!err.empty()) throw py::value_error("fastiou: " + err);

    inputs.geometry = g;
    inputs.labels = labels;
    inputs.from_logits = o.from_logits;
    inputs.per_image = o.per_image;
    inputs.pred_dtype = pd;
    inputs.true_dtype = td;
    inputs.y_pred = y_pred->data();
    inputs.y_true = y_true->data();
    inputs.weights = weights ? weights->data() : nullptr;
  }

  bool cuda() const { return is_cuda(device.device_type); }
  DType acc_dtype() const { return inputs.pred_dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32; }
  std::vector<int64_t> stats_shape() const {
    const auto& g = inputs.geometry;
    return inputs.per_image ? std::vector<int64_t>{g.batch, g.channels} : std::vector<int64_t>{g.channels};
  }

  void same_device(const Imported& a) const {
    const DLDevice d = a.device();
    if (d.device_type != device.device_type || d.device_id != device.device_id) {
      throw py::value_error(std::string("fastiou: ") + a.name() + " is on another device than y_pred");
    }
  }
};

Options make_options(bool from_logits, bool per_image, bool softmax, bool sparse,
                     std::optional<int64_t> ignore_index) {
  return Options{from_logits, per_image, softmax, sparse, ignore_index};
}

std::optional<uintptr_t> stream_value(const py::object& stream) {
  if (stream.is_none()) return std::nullopt;
  return static_cast<uintptr_t>(stream.cast<uint64_t>());
}

py::tuple overlap_stats(const py::object& y_true, const py::object& y_pred, const py::object& weights,
                        bool from_logits, bool per_image, bool softmax, bool sparse,
                        std::optional<int64_t> ignore_index, const py::object& stream, bool check_labels) {
  Call call(y_true, y_pred, weights, make_options(from_logits, per_image, softmax, sparse, ignore_index),
            stream_value(stream));
  std::vector<Buffer> out;
  for (int k = 0; k < 3; ++k) out.emplace_back(call.stats_shape(), call.acc_dtype(), call.device, call.stream);
  fastiou::StatsArgs a;
  static_cast<fastiou::OverlapInputs&>(a) = call.inputs;
  a.intersection = out[0].data();
  a.pred_sum = out[1].data();
  a.true_sum = out[2].data();
  std::string err;
  if (!call.cuda()) {
    std::vector<double> workspace(static_cast<size_t>(fastiou::stats_workspace_doubles(a.geometry)));
    a.workspace = workspace.data();
    py::gil_scoped_release release;
    err = fastiou::overlap_stats_cpu(a, thread_parallel_for());
  } else {
#if FASTIOU_WITH_CUDA
    DeviceGuard guard(call.device.device_id);
    Buffer workspace({fastiou::stats_workspace_doubles_cuda(a)}, DType::kFloat64, call.device, call.stream);
    a.workspace = static_cast<double*>(workspace.data());
    auto s = reinterpret_cast<cudaStream_t>(call.stream);
    err = fastiou::overlap_stats_cuda(a, s);
    if (err.empty() && a.labels.sparse && check_labels) {
      // Raising on a bad label needs its record on the host: one synchronization.
      fastiou::CudaLabelRecord record{-1, 0};
      check_cuda(cudaMemcpyAsync(&record, a.workspace + fastiou::kCudaLabelRecordOffset, sizeof record,
                                 cudaMemcpyDeviceToHost, s),
                 "cudaMemcpyAsync");
      {
        py::gil_scoped_release release;
        check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
      }
      if (record.flat_pixel >= 0) {
        const int64_t pixels = std::max<int64_t>(1, a.geometry.pixels);
        throw py::value_error("fastiou: " + fastiou::bad_label_message(a, record.flat_pixel / pixels,
                                                                        record.flat_pixel % pixels, record.value));
      }
    }
#endif
  }
  if (!err.empty()) {
    if (err.rfind("label ", 0) == 0) throw py::value_error("fastiou: " + err);
    throw std::runtime_error("fastiou: " + err);
  }
  return py::make_tuple(out[0], out[1], out[2]);
}

Buffer overlap_grad(const py::object& y_true, const py::object& y_pred, const py::object& weights,
                    const py::object& grad_intersection, const py::object& grad_pred_sum,
                    const py::object& grad_true_sum, bool from_logits, bool per_image, bool softmax,
                    bool sparse, std::optional<int64_t> ignore_index, bool wrt_true, const py::object& stream) {
  Call call(y_true, y_pred, weights, make_options(from_logits, per_image, softmax, sparse, ignore_index),
            stream_value(stream));
  const std::optional<uintptr_t> export_stream =
      call.cuda() ? std::optional<uintptr_t>(call.stream) : std::nullopt;
  Imported gi(grad_intersection, "grad_intersection", export_stream);
  Imported gp(grad_pred_sum, "grad_pred_sum", export_stream);
  Imported gt(grad_true_sum, "grad_true_sum", export_stream);
  for (const Imported* g : {&gi, &gp, &gt}) {
    call.same_device(*g);
    if (g->dtype() != call.acc_dtype()) {
      throw py::type_error(std::string("fastiou: ") + g->name() + " must be " + fastiou::dtype_name(call.acc_dtype()) +
                           " for y_pred of type " + fastiou::dtype_name(call.inputs.pred_dtype) + ", got " +
                           fastiou::dtype_name(g->dtype()));
    }
    if (g->shape() != call.stats_shape()) {
      throw py::value_error(std::string("fastiou: ") + g->name() + " shape " + fastiou::shape_string(g->shape()) +
                            " must be " + fastiou::shape_string(call.stats_shape()));
    }
  }
  Buffer out(call.y_pred->shape(), call.inputs.pred_dtype, call.device, call.stream);
  fastiou::GradArgs a;
  static_cast<fastiou::OverlapInputs&>(a) = call.inputs;
  a.wrt_true = wrt_true;
  a.grad_intersection = gi.data();
  a.grad_pred_sum = gp.data();
  a.grad_true_sum = gt.data();
  a.output = out.data();
  std::string err;
  if (!call.cuda()) {
    py::gil_scoped_release release;
    err = fastiou::overlap_grad_cpu(a, thread_parallel_for());
  } else {
#if FASTIOU_WITH_CUDA
    DeviceGuard guard(call.device.device_id);
    err = fastiou::overlap_grad_cuda(a, reinterpret_cast<cudaStream_t>(call.stream));
#endif
  }
  if (!err.empty()) throw std::runtime_error("fastiou: " + err);
  return out;
}

int cuda_device_count() {
#if FASTIOU_WITH_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

// Bytes in use in the device's default stream-ordered pool, which fastiou's
// outputs and scratch come from; reset_high restarts its high-water mark.
int64_t cuda_pool_used(int device, bool reset_high) {
#if FASTIOU_WITH_CUDA
  cudaMemPool_t pool;
  check_cuda(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
  unsigned long long used = 0;
  check_cuda(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used), "cudaMemPoolGetAttribute");
  if (reset_high) {
    unsigned long long zero = 0;
    check_cuda(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero), "cudaMemPoolSetAttribute");
  }
  return static_cast<int64_t>(used);
#else
  (void)device;
  (void)reset_high;
  return 0;
#endif
}

int64_t cuda_pool_used_high(int device) {
#if FASTIOU_WITH_CUDA
  cudaMemPool_t pool;
  check_cuda(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
  unsigned long long high = 0;
  check_cuda(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high), "cudaMemPoolGetAttribute");
  return static_cast<int64_t>(high);
#else
  (void)device;
  return 0;
#endif
}

std::string dtype_str(DType d) { return fastiou::dtype_name(d); }

// The XLA FFI handlers as PyCapsules, by target and platform, for
// jax.ffi.register_ffi_target(name, capsule, platform=...).
py::dict ffi_handlers() {
  py::dict targets;
#if FASTIOU_WITH_FFI
  py::dict stats, grad;
  stats["cpu"] = py::capsule(reinterpret_cast<void*>(&fastiou_xla::FastiouOverlapStatsHost));
  grad["cpu"] = py::capsule(reinterpret_cast<void*>(&fastiou_xla::FastiouOverlapGradHost));
#if FASTIOU_WITH_CUDA
  stats["cuda"] = py::capsule(reinterpret_cast<void*>(&fastiou_xla::FastiouOverlapStatsCuda));
  grad["cuda"] = py::capsule(reinterpret_cast<void*>(&fastiou_xla::FastiouOverlapGradCuda));
#endif
  targets["fastiou_overlap_stats"] = stats;
  targets["fastiou_overlap_grad"] = grad;
#endif
  return targets;
}

}  // namespace fastiou_py

PYBIND11_MODULE(_fastiou_kernels, m) {
  using namespace fastiou_py;
  m.doc() =
      "fastiou's overlap kernels on DLPack arrays, with no framework behind them: NumPy arrays run the C++ "
      "kernels, CUDA arrays the CUDA kernels on the given stream. fastiou.kernels wraps it for each framework.";

  py::class_<Buffer>(m, "Buffer", "An array fastiou wrote; take it in with any framework's from_dlpack.")
      .def("__dlpack__", &Buffer::dlpack, py::kw_only(), py::arg("stream") = py::none(),
           py::arg("max_version") = py::none(), py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__", &Buffer::dlpack_device)
      .def_property_readonly("shape", [](const Buffer& b) { return py::tuple(py::cast(b.shape())); })
      .def_property_readonly("dtype", [](const Buffer& b) { return dtype_str(b.dtype()); })
      .def_property_readonly("stream", &Buffer::stream);

  m.def("overlap_stats", &overlap_stats, py::arg("y_true"), py::arg("y_pred"), py::arg("weights") = py::none(),
        py::kw_only(), py::arg("from_logits") = false, py::arg("per_image") = true, py::arg("softmax") = false,
        py::arg("sparse") = false, py::arg("ignore_index") = py::none(), py::arg("stream") = py::none(),
        py::arg("check_labels") = true,
        "Soft overlap sums (I, P, T) per (image, channel), or per channel with per_image=False. On a CUDA "
        "array the work is enqueued on `stream` (a cudaStream_t as an int; 0 = the legacy default stream); "
        "with sparse labels and check_labels, the call waits for the stream to raise on an out-of-range label.");
  m.def("overlap_grad", &overlap_grad, py::arg("y_true"), py::arg("y_pred"), py::arg("weights"),
        py::arg("grad_intersection"), py::arg("grad_pred_sum"), py::arg("grad_true_sum"), py::kw_only(),
        py::arg("from_logits") = false, py::arg("per_image") = true, py::arg("softmax") = false,
        py::arg("sparse") = false, py::arg("ignore_index") = py::none(), py::arg("wrt_true") = false,
        py::arg("stream") = py::none(),
        "dL/dy_pred (or dL/dy_true with wrt_true) from dL/dI, dL/dP, dL/dT per group.");
  m.def("built_with_cuda", &fastiou::built_with_cuda, "Whether this build holds the CUDA kernels.");
  m.def("ffi_handlers", &ffi_handlers,
        "The XLA FFI handlers as PyCapsules: {target: {platform: capsule}}, platforms 'cpu' and 'cuda' "
        "(empty when built without XLA FFI headers).");
  m.def("cuda_device_count", &cuda_device_count, "CUDA devices visible (0 without CUDA kernels).");
  m.def("cuda_pool_used", &cuda_pool_used, py::arg("device"), py::arg("reset_high") = false,
        "Bytes in use in the device's default stream-ordered memory pool (fastiou's outputs and scratch); "
        "reset_high restarts its high-water mark.");
  m.def("cuda_pool_used_high", &cuda_pool_used_high, py::arg("device"),
        "High-water mark of the device's default stream-ordered memory pool, in bytes.");
}
