// fastiou._fastiou_kernels: the overlap kernels on DLPack arrays, with no
// framework behind them. NumPy arrays run the C++ kernels; CUDA arrays (CuPy,
// PyTorch, JAX, ...) run the CUDA kernels on the stream the caller names.
// Outputs are Buffers that any framework takes in with its from_dlpack.
// This file: argument checks, the two entry points and the bindings; the
// DLPack exchange is in dlpack.cc, the work left queued on a stream (held
// inputs, deferred label checks) in pending.cc.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/overlap_kernels.h"
#include "python/dlpack.h"
#include "python/pending.h"

#if FASTIOU_WITH_FFI
#include "xla/overlap_ffi.h"
#endif

namespace fastiou_py {

// Runs the CPU kernels on std::threads; results do not depend on the split.
fastiou::ParallelFor thread_parallel_for() {
  return fastiou::spawning_parallel_for(std::thread::hardware_concurrency(),
                                        [](std::function<void()> task) { std::thread(std::move(task)).detach(); });
}

int cuda_device_count() {
#if FASTIOU_WITH_CUDA
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    forget_cuda_error(err);
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

// "" when this build's CUDA kernels can run on the machine's driver, else why not.
std::string cuda_driver_problem() {
#if FASTIOU_WITH_CUDA
  return fastiou::cuda_driver_problem();
#else
  return "fastiou was built without CUDA kernels";
#endif
}

// Raises, before any CUDA call, when a CUDA array cannot run fastiou's kernels.
void require_cuda_kernels(int device) {
#if FASTIOU_WITH_CUDA
  const std::string problem = fastiou::cuda_driver_problem();
  if (!problem.empty()) throw std::runtime_error("fastiou: " + problem);
  const int n = cuda_device_count();
  if (n == 0) {
    throw std::runtime_error("fastiou: no CUDA device visible to fastiou's kernels (y_pred is on CUDA device " +
                             std::to_string(device) + ")");
  }
  if (device < 0 || device >= n) {
    throw std::runtime_error("fastiou: y_pred is on CUDA device " + std::to_string(device) +
                             ", but fastiou's kernels see " + std::to_string(n) + " CUDA devices");
  }
#else
  (void)device;
  throw py::value_error("fastiou: y_pred is a CUDA array, but fastiou was built without CUDA kernels "
                        "(fastiou.built_with_cuda() is False)");
#endif
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
      require_cuda_kernels(device.device_id);
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
    fastiou::LabelOptions labels;
    labels.softmax = o.softmax;
    labels.sparse = o.sparse;
    labels.has_ignore = o.ignore_index.has_value();
    labels.ignore_index = o.ignore_index.value_or(0);
    const std::string dtype_err = fastiou::validate_label_dtype(labels, td);
    if (!dtype_err.empty()) throw py::type_error("fastiou: " + dtype_err);
    if (weights && weights->dtype() != pd) {
      throw py::type_error(std::string("fastiou: weights must have y_pred's dtype ") + fastiou::dtype_name(pd) +
                           ", got " + fastiou::dtype_name(weights->dtype()));
    }
    if (o.ignore_index && !o.sparse) throw py::value_error("fastiou: ignore_index needs sparse labels (class indices)");

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

#if FASTIOU_WITH_CUDA
  // Once the kernels are queued: hands the inputs (and `more`) over to be
  // released when the stream has run them (see pending.h). Never raises.
  void hold_until_stream_ran(ImportedList more = {}) noexcept {
    for (auto* a : {&y_true, &y_pred, &weights}) {
      if (!*a) continue;
      try {
        more.push_back(std::move(*a));
      } catch (...) {
        // No room in the list: keep it here, and wait for the stream below.
      }
    }
    release_after_stream(std::move(more), device.device_id, reinterpret_cast<cudaStream_t>(stream));
    if (y_true || y_pred || weights) {
      py::gil_scoped_release nogil;
      forget_cuda_error(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream)));
    }
  }
#endif
};

Options make_options(bool from_logits, bool per_image, bool softmax, bool sparse,
                     std::optional<int64_t> ignore_index) {
  return Options{from_logits, per_image, softmax, sparse, ignore_index};
}

std::optional<uintptr_t> stream_value(const py::object& stream) {
  if (stream.is_none()) return std::nullopt;
  return static_cast<uintptr_t>(stream.cast<uint64_t>());
}

#if FASTIOU_WITH_CUDA
// check_labels=True with sparse labels on the GPU: the label record is read on
// the host, which waits for everything queued on the stream so far.
void wait_and_check_labels(const fastiou::StatsArgs& a, cudaStream_t s) {
  fastiou::CudaLabelRecord record{-1, 0};
  check_cuda(cudaMemcpyAsync(&record, a.workspace + fastiou::kCudaLabelRecordOffset, sizeof record,
                             cudaMemcpyDeviceToHost, s),
             "cudaMemcpyAsync");
  {
    py::gil_scoped_release release;
    check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  }
  release_finished();  // this call's inputs among them
  if (record.flat_pixel >= 0) throw py::value_error(bad_label_error(a, record));
}
#endif

// Returns (I, P, T, LabelCheck).
py::tuple overlap_stats(const py::object& y_true, const py::object& y_pred, const py::object& weights,
                        bool from_logits, bool per_image, bool softmax, bool sparse,
                        std::optional<int64_t> ignore_index, const py::object& stream, bool check_labels) {
  release_finished();
  Call call(y_true, y_pred, weights, make_options(from_logits, per_image, softmax, sparse, ignore_index),
            stream_value(stream));
  std::vector<Buffer> out;
  for (int k = 0; k < 3; ++k) out.emplace_back(call.stats_shape(), call.acc_dtype(), call.device, call.stream);
  fastiou::StatsArgs a;
  static_cast<fastiou::OverlapInputs&>(a) = call.inputs;
  a.intersection = out[0].data();
  a.pred_sum = out[1].data();
  a.true_sum = out[2].data();
  auto label_check = std::make_unique<LabelCheck>();
  std::string err;
  if (!call.cuda()) {
    // The C++ kernels check every label as they go: a bad one raises below,
    // whatever check_labels says.
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
    call.hold_until_stream_ran();
    if (err.empty() && a.labels.sparse) {
      if (check_labels) {
        wait_and_check_labels(a, s);
      } else {
        label_check = LabelCheck::after_stats(a, call.device.device_id, s);
      }
    }
#else
    (void)check_labels;
#endif
  }
  if (!err.empty()) {
    if (err.rfind("label ", 0) == 0) throw py::value_error("fastiou: " + err);
    throw std::runtime_error("fastiou: " + err);
  }
  return py::make_tuple(out[0], out[1], out[2], std::move(label_check));
}

Buffer overlap_grad(const py::object& y_true, const py::object& y_pred, const py::object& weights,
                    const py::object& grad_intersection, const py::object& grad_pred_sum,
                    const py::object& grad_true_sum, bool from_logits, bool per_image, bool softmax,
                    bool sparse, std::optional<int64_t> ignore_index, bool wrt_true, const py::object& stream) {
  release_finished();
  Call call(y_true, y_pred, weights, make_options(from_logits, per_image, softmax, sparse, ignore_index),
            stream_value(stream));
  const std::optional<uintptr_t> export_stream =
      call.cuda() ? std::optional<uintptr_t>(call.stream) : std::nullopt;
  ImportedList grads;
  grads.push_back(std::make_unique<Imported>(grad_intersection, "grad_intersection", export_stream));
  grads.push_back(std::make_unique<Imported>(grad_pred_sum, "grad_pred_sum", export_stream));
  grads.push_back(std::make_unique<Imported>(grad_true_sum, "grad_true_sum", export_stream));
  for (const auto& g : grads) {
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
  a.grad_intersection = grads[0]->data();
  a.grad_pred_sum = grads[1]->data();
  a.grad_true_sum = grads[2]->data();
  a.output = out.data();
  std::string err;
  if (!call.cuda()) {
    py::gil_scoped_release release;
    err = fastiou::overlap_grad_cpu(a, thread_parallel_for());
  } else {
#if FASTIOU_WITH_CUDA
    DeviceGuard guard(call.device.device_id);
    err = fastiou::overlap_grad_cuda(a, reinterpret_cast<cudaStream_t>(call.stream));
    call.hold_until_stream_ran(std::move(grads));
#endif
  }
  if (!err.empty()) throw std::runtime_error("fastiou: " + err);
  return out;
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

// The CPU kernels' SIMD level as (level, levels this CPU runs, problem).
py::tuple target_tuple(const fastiou::CpuTarget& t) {
  return py::make_tuple(t.level, t.available, t.problem);
}

py::tuple cpu_target_tuple() { return target_tuple(fastiou::cpu_target()); }

py::tuple select_cpu_target_tuple(const std::string& requested, int cpu_level) {
  return target_tuple(fastiou::select_cpu_target(requested, cpu_level));
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

  py::class_<LabelCheck>(m, "LabelCheck",
                         "Whether the sparse labels of one overlap_stats call were all in [0, C) (or ignore_index). "
                         "With check_labels=False on a CUDA array the call does not wait for its kernels; this "
                         "record answers later. ready(): whether the answer is in, without waiting. check(): "
                         "waits for it and raises the ValueError check_labels=True would have raised.")
      .def("ready", &LabelCheck::ready, "Whether check() would return at once (never waits).")
      .def("check", &LabelCheck::check,
           "Waits for the stats kernel that read the labels (not for the rest of its stream) and raises "
           "ValueError naming the first out-of-range label, if any; returns None otherwise. Raises again on "
           "every call.")
      .def("__repr__", &LabelCheck::repr);

  m.def("overlap_stats", &overlap_stats, py::arg("y_true"), py::arg("y_pred"), py::arg("weights") = py::none(),
        py::kw_only(), py::arg("from_logits") = false, py::arg("per_image") = true, py::arg("softmax") = false,
        py::arg("sparse") = false, py::arg("ignore_index") = py::none(), py::arg("stream") = py::none(),
        py::arg("check_labels") = true,
        "Soft overlap sums per (image, channel), or per channel with per_image=False: returns (I, P, T, "
        "label_check). On a CUDA array the work is enqueued on `stream` (a cudaStream_t as an int; 0 = the "
        "legacy default stream) and the call returns without waiting, except for sparse labels with "
        "check_labels=True (the default): the call then waits for everything queued on the stream so far "
        "(one host synchronization per call, which stops the host from running ahead of the GPU) and raises "
        "ValueError on a label outside [0, C). With check_labels=False it does not wait: a bad label turns "
        "every sum into NaN and label_check.check() raises that ValueError later. On CPU arrays the C++ "
        "kernels check every label as they run and raise at once, whatever check_labels says; label_check "
        "then has nothing left to check.");
  m.def("overlap_grad", &overlap_grad, py::arg("y_true"), py::arg("y_pred"), py::arg("weights"),
        py::arg("grad_intersection"), py::arg("grad_pred_sum"), py::arg("grad_true_sum"), py::kw_only(),
        py::arg("from_logits") = false, py::arg("per_image") = true, py::arg("softmax") = false,
        py::arg("sparse") = false, py::arg("ignore_index") = py::none(), py::arg("wrt_true") = false,
        py::arg("stream") = py::none(),
        "dL/dy_pred (or dL/dy_true with wrt_true) from dL/dI, dL/dP, dL/dT per group.");
  m.def("built_with_cuda", &fastiou::built_with_cuda, "Whether this build holds the CUDA kernels.");
  m.def("cpu_target", &cpu_target_tuple,
        "The CPU kernels' SIMD level: (level, levels this CPU runs, problem), chosen once per process.");
  m.def("select_cpu_target", &select_cpu_target_tuple, py::arg("requested"), py::arg("cpu_level"),
        "The choice cpu_target() makes for a FASTIOU_CPU_TARGET value on a CPU of an x86-64 level (1-4).");
  m.def("cpu_level", &fastiou::cpu_level, "This CPU's x86-64 level by CPUID: 1 (baseline) to 4.");
  m.def("ffi_handlers", &ffi_handlers,
        "The XLA FFI handlers as PyCapsules: {target: {platform: capsule}}, platforms 'cpu' and 'cuda' "
        "(empty when built without XLA FFI headers).");
  m.def("cuda_device_count", &cuda_device_count, "CUDA devices visible (0 without CUDA kernels).");
  m.def("cuda_driver_problem", &cuda_driver_problem,
        "'' when the machine's CUDA driver can run this build's CUDA kernels, else a message naming the "
        "versions; without CUDA kernels in the build, 'fastiou was built without CUDA kernels'.");
  m.def("release_finished", &release_finished,
        "Lets go of the inputs of CUDA calls whose kernels have run (every call does this first); returns "
        "how many calls' inputs are still held because their kernels are still queued.");
  // Inputs still held at exit are released while Python is alive to take them.
  py::module_::import("atexit").attr("register")(py::cpp_function(&release_all));
  m.def("cuda_pool_used", &cuda_pool_used, py::arg("device"), py::arg("reset_high") = false,
        "Bytes in use in the device's default stream-ordered memory pool (fastiou's outputs and scratch); "
        "reset_high restarts its high-water mark.");
  m.def("cuda_pool_used_high", &cuda_pool_used_high, py::arg("device"),
        "High-water mark of the device's default stream-ordered memory pool, in bytes.");
}
