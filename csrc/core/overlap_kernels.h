// Framework-neutral declarations of fastiou's overlap kernels.
//
// Tensors are channels-last and seen as [batch, pixels, channels]; every
// adapter (TensorFlow ops, XLA FFI handlers, the Python module) validates its
// inputs, fills these structs and calls the kernels below.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/overlap_options.h"

namespace fastiou {

enum class DType : int {
  kBool,
  kUInt8,
  kInt32,
  kInt64,
  kFloat16,
  kBFloat16,
  kFloat32,
  kFloat64,
};

const char* dtype_name(DType dtype);

// Geometry of a binary/multi-label overlap problem.
struct OverlapGeometry {
  int64_t batch = 0;
  int64_t pixels = 0;    // elements per image and channel (product of the spatial dims)
  int64_t channels = 0;
  // Weights have one value per pixel, shared by its channels (shape [..., 1]),
  // instead of one per element.
  bool weights_per_pixel = false;

  int64_t elements() const { return batch * pixels * channels; }
  // Pixels in one reduction chunk. The partition into chunks depends on the
  // shape alone, never on the thread count, so sums are bitwise reproducible.
  int64_t chunk_pixels() const;
  int64_t chunks_per_image() const;
  int64_t chunks() const { return batch * chunks_per_image(); }
  // Number of groups the sums are reported for: batch*channels or channels.
  int64_t groups(bool per_image) const { return per_image ? batch * channels : channels; }
};

// The most channels a y_pred may have: channel indices, and the offsets of a
// vector's worth of pixels, fit in 32 bits.
constexpr int64_t kMaxChannels = int64_t(1) << 24;

// Work elements aimed at per chunk.
constexpr int64_t kChunkElements = 32768;

// What both kernels read: the options (core/overlap_options.h), the inputs
// and how to interpret them.
struct OverlapInputs : OverlapOptions {
  OverlapGeometry geometry;
  DType pred_dtype = DType::kFloat32;
  DType true_dtype = DType::kFloat32;
  const void* y_pred = nullptr;
  const void* y_true = nullptr;
  const void* weights = nullptr;  // pred_dtype with has_weights, else nullptr (unit weights)
};

struct StatsArgs : OverlapInputs {
  // Outputs of groups(per_image) values each, in double for float64
  // predictions and float otherwise.
  void* intersection = nullptr;
  void* pred_sum = nullptr;
  void* true_sum = nullptr;
  // Caller-provided scratch of stats_workspace_doubles() doubles.
  double* workspace = nullptr;
};

// Doubles of scratch the stats kernel needs: 3 per chunk and channel.
int64_t stats_workspace_doubles(const OverlapGeometry& geometry);

// With wrt_true the kernel writes dL/dy_true (in pred_dtype), else dL/dy_pred.
struct GradArgs : OverlapInputs, GradOnlyOptions {
  // dL/dI, dL/dP, dL/dT per group, in the stats' accumulation type.
  const void* grad_intersection = nullptr;
  const void* grad_pred_sum = nullptr;
  const void* grad_true_sum = nullptr;
  void* output = nullptr;  // pred_dtype, same shape as y_pred
};

// Checks the shapes of y_pred, y_true and (when not null) weights against
// each other and the label options, and derives the geometry. Returns an
// empty string, or a message naming the problem. Every adapter calls it.
using Shape = std::vector<int64_t>;
std::string validate_overlap_shapes(const Shape& pred, const Shape& tru, const Shape* weights,
                                    const OverlapOptions& options, OverlapGeometry* geometry);
std::string shape_string(const Shape& shape);

// Checks y_true's dtype against the label options: sparse labels (class
// indices) must be uint8, int32 or int64. Empty, or the problem. Every adapter
// calls it, so a float label never reaches a kernel that would truncate it.
std::string validate_label_dtype(const OverlapOptions& options, DType true_dtype);

// The first input value a stats call refuses (the range guards): a sparse
// label outside [0, channels) that is not ignore_index, a dense target
// outside [0, 1] (masks stored as 0/255), or, from probabilities, a
// prediction outside [0, 1] (logits without from_logits). NaN is no such
// value: it gives NaN sums.
enum class InputProblem : int64_t { kNone = 0, kLabel = 1, kTarget = 2, kProbability = 3 };
// Whether an error message of the kernels is bad_input_message's: the
// caller's input is at fault (ValueError in Python).
bool is_bad_input_message(const std::string& message);
// Trivial, so that the CPU kernels' SIMD copies share no code for it
// (core/simd_level.h).
struct BadInput {
  InputProblem problem;
  int64_t pixel;    // within its image (flat over the spatial axes)
  int64_t channel;  // kTarget, kProbability
  int64_t label;    // kLabel: the label as stored
  double value;     // kTarget, kProbability: the value as stored
};

// The error for a BadInput of batch index `image`: what is wrong, where, and
// what to do about it.
std::string bad_input_message(const OverlapInputs& inputs, int64_t image, const BadInput& bad);
// The same for a bad sparse label.
std::string bad_label_message(const OverlapInputs& inputs, int64_t image, int64_t pixel,
                              int64_t value);

// Runs fn(begin, end) over [0, units) on some threads; every unit costs about
// cost_per_unit cycles. Results never depend on how units are split up.
using ParallelFor =
    std::function<void(int64_t units, int64_t cost_per_unit,
                       const std::function<void(int64_t, int64_t)>& fn)>;

// Runs everything on the calling thread.
ParallelFor serial_parallel_for();

// Runs fn over [0, units) in pieces of about a million cycles at least, at
// most `threads` of them: the first on the calling thread, each other one as a
// task handed to `spawn` (which must run it once, on another thread), and
// waits for all of them. The Python module spawns std::threads, the Host XLA
// FFI handlers use XLA's thread pool.
using Spawn = std::function<void(std::function<void()> task)>;
ParallelFor spawning_parallel_for(int64_t threads, Spawn spawn);

// The SIMD level the CPU kernels run at. A portable build holds one copy of
// the kernels per x86-64 level (x86-64-v2: SSE4.2; x86-64-v3: AVX2 and FMA;
// x86-64-v4: AVX-512) and runs the best one this CPU supports, chosen once per
// process; the environment variable FASTIOU_CPU_TARGET names a lower one
// (tests, debugging). A build for one -march (FASTIOU_CPU_ARCH) holds that
// copy alone.
struct CpuTarget {
  std::string level;                   // the level in use ("x86-64-v3"), empty with a problem
  std::vector<std::string> available;  // levels built that this CPU runs, lowest first
  std::string problem;                 // why the kernels cannot run: every CPU kernel returns it
  int index = -1;                      // the level's entry in the build's table
};
// This process's choice: select_cpu_target(FASTIOU_CPU_TARGET, cpu_level()),
// made on first use.
const CpuTarget& cpu_target();
// The x86-64 level of this CPU, by CPUID: 1 (baseline) to 4.
int cpu_level();
// The choice for a FASTIOU_CPU_TARGET value (empty: none set) on a CPU of
// the given level.
CpuTarget select_cpu_target(const std::string& requested, int cpu_level);

// CPU kernels. Shapes are assumed validated; they return an empty string on
// success and a message otherwise: an unsupported dtype combination, or (stats)
// a sparse label outside [0, channels) that is not ignore_index. The gradient
// kernel treats such a label as matching no channel; it never indexes by it.
std::string overlap_stats_cpu(const StatsArgs& args, const ParallelFor& parallel_for);
std::string overlap_grad_cpu(const GradArgs& args, const ParallelFor& parallel_for);

// Whether this build of fastiou holds the CUDA kernels below.
bool built_with_cuda();

// CUDA kernels (defined only when built_with_cuda()). Every pointer in the
// args is device memory; `stream` is a cudaStream_t. They enqueue their work
// on the stream and return without synchronizing: an empty string, or the
// launch error. The stats kernel needs a caller-provided device workspace of
// stats_workspace_doubles_cuda() doubles in args.workspace (any initial
// content). Its reduction is a tree over a partition fixed by the shape, so
// the sums are bitwise the same on every run.
//
// A value the range guards refuse (BadInput: a sparse label outside
// [0, channels) that is not ignore_index, a target or probability outside
// [0, 1]) cannot raise from the GPU without a synchronization: the stats
// kernel then writes NaN to every sum and records the first such value in the
// workspace (CudaInputRecord), where the caller finds it once the stream has
// run.
int64_t stats_workspace_doubles_cuda(const OverlapInputs& inputs);

// Empty when the machine's CUDA driver and the current CUDA device can run
// this build's kernels; otherwise a message naming the CUDA version the
// kernels were built with and the version the driver supports (or that no
// driver was found), or the device and the architectures built, and what to
// do. Checked once per process (the device once per device);
// overlap_stats_cuda and overlap_grad_cuda return it as their error before
// launching anything.
std::string cuda_driver_problem();
std::string overlap_stats_cuda(const StatsArgs& args, void* stream);
std::string overlap_grad_cuda(const GradArgs& args, void* stream);

// What a CUDA stats launch records of the values it refuses (BadInput), in
// its workspace: the first out-of-range sparse label (lowest flat pixel index
// over batch and spatial axes, -1 when none) and its value; the first target
// or probability outside [0, 1] (lowest flat element index, -1 when none),
// which of the two it is (an InputProblem) and its value.
struct CudaInputRecord {
  int64_t flat_pixel;
  int64_t label;
  int64_t flat_element;
  int64_t problem;
  double value;
};
// Where the CudaInputRecord lies in the stats workspace, in doubles.
constexpr int64_t kCudaRecordOffset = 0;
constexpr int64_t kCudaRecordDoubles = 5;
static_assert(sizeof(CudaInputRecord) == kCudaRecordDoubles * sizeof(double), "one double per field");

// The error a record holds (bad_input_message, a label first), or empty.
std::string cuda_record_message(const OverlapInputs& inputs, const CudaInputRecord& record);

}  // namespace fastiou
