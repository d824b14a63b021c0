// fastiou._fastiou_kernels: the overlap kernels on DLPack arrays, with no
// framework behind them. NumPy arrays run the C++ kernels; CUDA arrays (CuPy,
// PyTorch, JAX, ...) run the CUDA kernels on the stream the caller names.
// Outputs are Buffers that any framework takes in with its from_dlpack.
// This file: argument checks, the two entry points and the bindings; the
// DLPack exchange is in dlpack.cc, the work left queued on a stream (held
// inputs, deferred label checks) in pending.cc, what the module reports about
// the machine (CUDA devices, memory pool, SIMD level, FFI handlers) in
// machine.cc.
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

#include "core/confusion.h"
#include "core/overlap_kernels.h"
#include "python/dlpack.h"
#include "python/machine.h"
#include "python/pending.h"

namespace fastiou_py {

// Runs the CPU kernels on std::threads; results do not depend on the split.
fastiou::ParallelFor thread_parallel_for() {
  return fastiou::spawning_parallel_for(std::thread::hardware_concurrency(),
                                        [](std::function<void()> task) { std::thread(std::move(task)).detach(); });
}

// The options as the functions' keyword arguments (core/overlap_options.h):
// a setting as itself, an optional one as None when not given; the flags are
// read off the arguments they speak of.
#define FASTIOU_PY_PARAM_setting(type, name) type name,
#define FASTIOU_PY_PARAM_optional(type, name) std::optional<type> name,
#define FASTIOU_PY_PARAM_flag(type, name)
#define FASTIOU_PY_PARAM(type, name, init, kind) FASTIOU_PY_PARAM_##kind(type, name)

#define FASTIOU_PY_ARG_setting(name, init) py::arg(#name) = init,
#define FASTIOU_PY_ARG_optional(name, init) py::arg(#name) = py::none(),
#define FASTIOU_PY_ARG_flag(name, init)
#define FASTIOU_PY_ARG(type, name, init, kind) FASTIOU_PY_ARG_##kind(name, init)

#define FASTIOU_PY_PASS_setting(name) name,
#define FASTIOU_PY_PASS_optional(name) name,
#define FASTIOU_PY_PASS_flag(name)
#define FASTIOU_PY_PASS(type, name, init, kind) FASTIOU_PY_PASS_##kind(name)

#define FASTIOU_PY_SET_setting(name, init) o.name = name;
#define FASTIOU_PY_SET_optional(name, init) o.name = name.value_or(init);
#define FASTIOU_PY_SET_flag(name, init)
#define FASTIOU_PY_SET(type, name, init, kind) FASTIOU_PY_SET_##kind(name, init)

#define FASTIOU_PY_IS_FLAG_setting 0
#define FASTIOU_PY_IS_FLAG_optional 0
#define FASTIOU_PY_IS_FLAG_flag 1
#define FASTIOU_PY_COUNT_FLAGS(type, name, init, kind) +FASTIOU_PY_IS_FLAG_##kind

fastiou::OverlapOptions call_options(FASTIOU_OVERLAP_OPTIONS(FASTIOU_PY_PARAM) const py::object& weights) {
  fastiou::OverlapOptions o;
  FASTIOU_OVERLAP_OPTIONS(FASTIOU_PY_SET)
  // The flags: whether weights and ignore_index were given.
  static_assert(
      0 FASTIOU_OVERLAP_OPTIONS(FASTIOU_PY_COUNT_FLAGS) FASTIOU_GRAD_ONLY_OPTIONS(FASTIOU_PY_COUNT_FLAGS) == 2,
      "a new flag option: set it here from the argument it speaks of");
  o.has_weights = !weights.is_none();
  o.has_ignore = ignore_index.has_value();
  return o;
}

// Everything both entry points check and derive from their common inputs.
struct Call {
  std::unique_ptr<Imported> y_true, y_pred, weights;
  DLDevice device{kDLCPU, 0};
  uintptr_t stream = 0;
  fastiou::OverlapInputs inputs;

  Call(const py::handle& t, const py::handle& p, const py::handle& w, const fastiou::OverlapOptions& options,
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
    const std::string dtype_err = fastiou::validate_label_dtype(options, td);
    if (!dtype_err.empty()) throw py::type_error("fastiou: " + dtype_err);
    if (weights && weights->dtype() != pd) {
      throw py::type_error(std::string("fastiou: weights must have y_pred's dtype ") + fastiou::dtype_name(pd) +
                           ", got " + fastiou::dtype_name(weights->dtype()));
    }
    if (options.has_ignore && !options.sparse) {
      throw py::value_error("fastiou: ignore_index needs sparse labels (class indices)");
    }

    fastiou::OverlapGeometry g;
    const std::string err = fastiou::validate_overlap_shapes(
        y_pred->shape(), y_true->shape(), weights ? &weights->shape() : nullptr, options, &g);
    if (!err.empty()) throw py::value_error("fastiou: " + err);

    static_cast<fastiou::OverlapOptions&>(inputs) = options;
    inputs.geometry = g;
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

std::optional<uintptr_t> stream_value(const py::object& stream) {
  if (stream.is_none()) return std::nullopt;
  return static_cast<uintptr_t>(stream.cast<uint64_t>());
}

#if FASTIOU_WITH_CUDA
// check_labels=True with sparse labels on the GPU: the label record is read on
// the host, which waits for everything queued on the stream so far.
void wait_and_check_labels(const fastiou::StatsArgs& a, cudaStream_t s) {
  fastiou::CudaInputRecord record{-1, 0, -1, 0, 0.0};
  check_cuda(cudaMemcpyAsync(&record, a.workspace + fastiou::kCudaRecordOffset, sizeof record,
                             cudaMemcpyDeviceToHost, s),
             "cudaMemcpyAsync");
  {
    py::gil_scoped_release release;
    check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  }
  release_finished();  // this call's inputs among them
  const std::string problem = bad_input_error(a, record);
  if (!problem.empty()) throw py::value_error(problem);
}
#endif

// Returns (I, P, T, LabelCheck).
py::tuple overlap_stats(const py::object& y_true, const py::object& y_pred, const py::object& weights,
                        FASTIOU_OVERLAP_OPTIONS(FASTIOU_PY_PARAM) const py::object& stream, bool check_labels) {
  release_finished();
  Call call(y_true, y_pred, weights, call_options(FASTIOU_OVERLAP_OPTIONS(FASTIOU_PY_PASS) weights),
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
    if (err.empty()) {
      // Sparse labels with check_labels wait; otherwise the record of the
      // range guards is read later, by label_check.
      if (a.sparse && check_labels) {
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
    if (fastiou::is_bad_input_message(err)) throw py::value_error("fastiou: " + err);
    throw std::runtime_error("fastiou: " + err);
  }
  return py::make_tuple(out[0], out[1], out[2], std::move(label_check));
}

Buffer overlap_grad(const py::object& y_true, const py::object& y_pred, const py::object& weights,
                    const py::object& grad_intersection, const py::object& grad_pred_sum,
                    const py::object& grad_true_sum, FASTIOU_OVERLAP_OPTIONS(FASTIOU_PY_PARAM)
                        FASTIOU_GRAD_ONLY_OPTIONS(FASTIOU_PY_PARAM) const py::object& stream) {
  release_finished();
  Call call(y_true, y_pred, weights, call_options(FASTIOU_OVERLAP_OPTIONS(FASTIOU_PY_PASS) weights),
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
  {
    fastiou::GradOnlyOptions& o = a;
    FASTIOU_GRAD_ONLY_OPTIONS(FASTIOU_PY_SET)
  }
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

// Raises NotImplementedError (pybind11 has no C++ type for it).
[[noreturn]] void throw_not_implemented(const std::string& message) {
  PyErr_SetString(PyExc_NotImplementedError, message.c_str());
  throw py::error_already_set();
}

// The confusion counts (core/confusion.h) of y_true [batch, pixels, true
// channels] and y_pred [batch, pixels, pred channels] with weights [rows,
// cols] or None: a float64 Buffer [3, num_classes]. by_pixel (CPU arrays
// only) counts one pixel at a time by the CUDA kernel's per-pixel steps, and
// refuses what the CUDA kernel refuses (deterministic).
Buffer confusion_counts(const py::object& y_true, const py::object& y_pred, const py::object& weights,
                        FASTIOU_CONFUSION_OPTIONS(FASTIOU_PY_PARAM) const py::object& stream, bool by_pixel) {
  release_finished();
  fastiou::ConfusionArgs a;
  {
    fastiou::ConfusionOptions& o = a;
    FASTIOU_CONFUSION_OPTIONS(FASTIOU_PY_SET)
    static_assert(0 FASTIOU_CONFUSION_OPTIONS(FASTIOU_PY_COUNT_FLAGS) == 2,
                  "a new flag option: set it here from the argument it speaks of");
    o.has_weights = !weights.is_none();
    o.has_ignore = ignore_class.has_value();
  }
  const DLDevice device = device_of(y_pred, "y_pred");
  const bool cuda = is_cuda(device.device_type);
  if (cuda) require_cuda_kernels(device.device_id);
  if (cuda && by_pixel) throw py::value_error("fastiou: by_pixel counts on the host: pass CPU arrays");
  // The CUDA kernel's refusal, which by_pixel (its steps on the host) shares.
  if (cuda || by_pixel) {
    const std::string refused = fastiou::confusion_determinism_problem(a);
    if (!refused.empty()) throw_not_implemented("fastiou: " + refused);
  }
  const uintptr_t stream_handle = cuda ? stream_value(stream).value_or(0) : 0;
  const std::optional<uintptr_t> export_stream = cuda ? std::optional<uintptr_t>(stream_handle) : std::nullopt;
  ImportedList inputs;
  inputs.push_back(std::make_unique<Imported>(y_true, "y_true", export_stream));
  inputs.push_back(std::make_unique<Imported>(y_pred, "y_pred", export_stream));
  if (!weights.is_none()) inputs.push_back(std::make_unique<Imported>(weights, "weights", export_stream));
  for (const auto& in : inputs) {
    const DLDevice d = in->device();
    if (d.device_type != device.device_type || d.device_id != device.device_id) {
      throw py::value_error(std::string("fastiou: ") + in->name() + " is on another device than y_pred");
    }
  }
  const Imported& t = *inputs[0];
  const Imported& p = *inputs[1];
  const Imported* w = inputs.size() > 2 ? inputs[2].get() : nullptr;
  std::string err = fastiou::validate_confusion(t.shape(), p.shape(), w ? w->shape() : fastiou::Shape{}, &a);
  if (!err.empty()) throw py::value_error("fastiou: " + err);
  a.true_dtype = t.dtype();
  a.pred_dtype = p.dtype();
  a.weight_dtype = w ? w->dtype() : DType::kFloat32;
  a.y_true = t.data();
  a.y_pred = p.data();
  a.weights = w ? w->data() : nullptr;
  err = fastiou::confusion_input_problem(a);
  if (!err.empty()) throw py::type_error("fastiou: " + err);
  Buffer out({3, a.num_classes}, DType::kFloat64, device, stream_handle);
  a.counts = static_cast<double*>(out.data());
  if (!cuda) {
    py::gil_scoped_release release;
    if (by_pixel) {
      err = fastiou::confusion_counts_by_pixel(a);
    } else {
      std::vector<double> workspace(static_cast<size_t>(fastiou::confusion_workspace_doubles(a)));
      a.workspace = workspace.data();
      err = fastiou::confusion_counts_cpu(a, thread_parallel_for());
    }
  } else {
#if FASTIOU_WITH_CUDA
    DeviceGuard guard(device.device_id);
    Buffer workspace({fastiou::confusion_workspace_doubles_cuda(a)}, DType::kFloat64, device, stream_handle);
    a.workspace = static_cast<double*>(workspace.data());
    err = fastiou::confusion_counts_cuda(a, reinterpret_cast<void*>(stream_handle));
    release_after_stream(std::move(inputs), device.device_id, reinterpret_cast<cudaStream_t>(stream_handle));
#endif
  }
  if (!err.empty()) throw std::runtime_error("fastiou: " + err);
  return out;
}

std::string dtype_str(DType d) { return fastiou::dtype_name(d); }

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
        py::kw_only(), FASTIOU_OVERLAP_OPTIONS(FASTIOU_PY_ARG) py::arg("stream") = py::none(),
        py::arg("check_labels") = true,
        "Soft overlap sums per (image, channel), or per channel with per_image=False: returns (I, P, T, "
        "label_check). On a CUDA array the work is enqueued on `stream` (a cudaStream_t as an int; 0 = the "
        "legacy default stream) and the call returns without waiting, except for sparse labels with "
        "check_labels=True (the default): the call then waits for everything queued on the stream so far "
        "(one host synchronization per call, which stops the host from running ahead of the GPU) and raises "
        "ValueError on a label outside [0, C) (or a probability outside [0, 1]). With "
        "check_labels=False it does not wait: a bad label turns "
        "every sum into NaN and label_check.check() raises that ValueError later. A dense target or a "
        "probability outside [0, 1] on a GPU gives NaN sums without waiting, and label_check.check() "
        "raises the ValueError naming it. On CPU arrays the C++ "
        "kernels check every label and value as they run and raise at once, whatever check_labels says; "
        "label_check "
        "then has nothing left to check.");
  m.def("overlap_grad", &overlap_grad, py::arg("y_true"), py::arg("y_pred"), py::arg("weights"),
        py::arg("grad_intersection"), py::arg("grad_pred_sum"), py::arg("grad_true_sum"), py::kw_only(),
        FASTIOU_OVERLAP_OPTIONS(FASTIOU_PY_ARG) FASTIOU_GRAD_ONLY_OPTIONS(FASTIOU_PY_ARG)
        py::arg("stream") = py::none(), "dL/dy_pred (or dL/dy_true with wrt_true) from dL/dI, dL/dP, dL/dT per group.");
  m.def("confusion_counts", &confusion_counts, py::arg("y_true"), py::arg("y_pred"), py::arg("weights") = py::none(),
        py::kw_only(), FASTIOU_CONFUSION_OPTIONS(FASTIOU_PY_ARG) py::arg("stream") = py::none(),
        py::arg("by_pixel") = false,
        "Confusion counts of the IoU metrics: float64 [3, num_classes] (per class tp, true, pred) of y_true "
        "[batch, pixels, channels] and y_pred [batch, pixels, channels] with weights [1 or batch, 1 or pixels]. "
        "pred_rule and true_rule: 0 class index, 1 argmax over the channels, 2 (y_pred) y_pred >= threshold. "
        "On a CUDA array the work is enqueued on `stream` and the call returns without waiting. deterministic: "
        "require counts that are bitwise the same on every run; on a CUDA array, fractional weights over 256 "
        "classes (added by atomics) then raise NotImplementedError (the C++ kernel always repeats its bits). "
        "by_pixel (CPU arrays): one pixel at a time by the CUDA kernel's per-pixel steps, on one thread, with "
        "the CUDA kernel's refusal.");
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
        "Bytes in use in fastiou's stream-ordered memory pool on the device (its outputs and scratch); "
        "reset_high restarts its high-water mark.");
  m.def("cuda_pool_used_high", &cuda_pool_used_high, py::arg("device"),
        "High-water mark of fastiou's stream-ordered memory pool on the device, in bytes.");
}
