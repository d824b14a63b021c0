// The CUDA kernel of the confusion counts of fastiou's metrics
// (core/confusion.h), in one pass over the masks.
//
// The atomics path (count_pixels; fractional weights with few classes take
// the fixed-order path below instead, count_pixels_ordered): a block owns
// kCountTile consecutive pixels of the flattened batch, read coalesced: thread x takes pixels x, x + kCountThreads, ... of the tile. Each
// pixel's classes and weight come from confusion_pixel (core/confusion_math.h),
// the per-pixel steps the host's confusion_counts_by_pixel takes for the CPU
// tests. The block adds its pixels into a histogram of 3 * num_classes counts
// in shared memory (in global memory past kSharedClasses classes), then adds
// the histogram's non-zero counts to the output with one atomic each.
// Without weights a warp adds each count once per distinct class among its
// lanes (__match_any_sync), not once per pixel: a binary mask would otherwise
// queue 32 atomics on one address per warp step.
//
// The counts are doubles: sums of unit or integer weights are exact below
// 2^53, so whatever order the atomics take the counts are the same on every
// run. Fractional weights with up to kCudaOrderedClasses classes are added
// in a fixed order (count_pixels_ordered), so their counts are bitwise the
// same on every run too; with more classes they are added by atomics and can
// differ in the last bits between runs.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "core/confusion.h"
#include "core/confusion_math.h"
#include "cuda/overlap_cuda.cuh"

namespace fastiou {
namespace cuda_detail {
namespace {

constexpr int kCountThreads = 256;
constexpr int kPixelsPerCountThread = 16;
constexpr int64_t kCountTile = int64_t(kCountThreads) * kPixelsPerCountThread;
// Up to this many classes the block's histogram (3 * num_classes doubles,
// 48 KiB at most) lies in shared memory.
constexpr int64_t kSharedClasses = 2048;

// Adds v to counts[key] for every lane whose key is not negative. Every lane
// of the warp calls it together (no lane has left the kernel). With unit
// weights the lanes of one key add their number once, by their lowest lane.
__device__ __forceinline__ void add_count(double* counts, int key, double v, bool unit) {
  if (unit) {
    const unsigned peers = __match_any_sync(0xffffffffu, key);
    const int lane = threadIdx.x & 31;
    if (key >= 0 && lane == __ffs(peers) - 1) atomicAdd(counts + key, static_cast<double>(__popc(peers)));
  } else if (key >= 0) {
    atomicAdd(counts + key, v);
  }
}

// kInShared: the block's histogram lies in shared memory (few enough
// classes), so its atomics are shared-memory ones; else they go to the
// output directly.
template <ClassRule kTrue, ClassRule kPred, typename TT, typename TP, bool kInShared>
__global__ void __launch_bounds__(kCountThreads) count_pixels(ConfusionArgs a) {
  extern __shared__ double shared_hist[];
  const int K = static_cast<int>(a.num_classes);
  double* hist = kInShared ? shared_hist : a.counts;
  if constexpr (kInShared) {
    for (int j = threadIdx.x; j < 3 * K; j += kCountThreads) shared_hist[j] = 0.0;
    __syncthreads();
  }
  const int64_t total = a.batch * a.pixels;
  const int64_t first = int64_t(blockIdx.x) * kCountTile;
  const bool unit = !a.has_weights;
  // Every thread walks every step, in the tile or not, so that the warp
  // calls add_count together.
  for (int k = 0; k < kPixelsPerCountThread; ++k) {
    const int64_t flat = first + int64_t(k) * kCountThreads + threadIdx.x;
    PixelCount c{false, 0, 0, 0.0};
    if (flat < total) c = confusion_pixel<kTrue, kPred, TT, TP>(a, flat);
    add_count(hist, c.counted && c.t == c.p ? c.t : -1, c.w, unit);
    add_count(hist, c.counted ? K + c.t : -1, c.w, unit);
    add_count(hist, c.counted ? 2 * K + c.p : -1, c.w, unit);
  }
  if constexpr (kInShared) {
    __syncthreads();
    for (int j = threadIdx.x; j < 3 * K; j += kCountThreads) {
      const double v = shared_hist[j];
      if (v != 0.0) atomicAdd(a.counts + j, v);
    }
  }
}

// Fractional weights with few classes take a fixed order instead of
// atomics: each warp keeps its own histogram in shared memory, to which the
// lanes of one class add the sum of their values taken in lane order; each
// block adds its warps' histograms in warp order into its partial, and
// add_partials adds the partials in block order. The grid's size depends on
// the shape alone (at most kOrderedBlocks blocks, each walking every
// kOrderedBlocks-th tile), so the counts are bitwise the same on every run.
constexpr int kWarps = kCountThreads / 32;
static_assert(kWarps * 3 * kCudaOrderedClasses * sizeof(double) <= 48 * 1024,
              "the ordered path's warp histograms fit in 48 KiB of shared memory");
constexpr int64_t kOrderedBlocks = 1024;

__device__ __forceinline__ void add_ordered(double* warp_hist, int key, double v) {
  const unsigned peers = __match_any_sync(0xffffffffu, key);
  double sum = 0.0;
#pragma unroll
  for (int l = 0; l < 32; ++l) {
    const double x = __shfl_sync(0xffffffffu, v, l);
    if ((peers >> l) & 1u) sum += x;
  }
  if (key >= 0 && (threadIdx.x & 31) == __ffs(peers) - 1) warp_hist[key] += sum;
  __syncwarp();  // the next step's adder of this key may be another lane
}

template <ClassRule kTrue, ClassRule kPred, typename TT, typename TP>
__global__ void __launch_bounds__(kCountThreads) count_pixels_ordered(ConfusionArgs a, int64_t tiles) {
  extern __shared__ double warp_hists[];  // kWarps histograms of 3 * num_classes
  const int K = static_cast<int>(a.num_classes);
  const int n = 3 * K;
  for (int j = threadIdx.x; j < kWarps * n; j += kCountThreads) warp_hists[j] = 0.0;
  __syncthreads();
  double* hist = warp_hists + (threadIdx.x / 32) * n;
  const int64_t total = a.batch * a.pixels;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    for (int k = 0; k < kPixelsPerCountThread; ++k) {
      const int64_t flat = tile * kCountTile + int64_t(k) * kCountThreads + threadIdx.x;
      PixelCount c{false, 0, 0, 0.0};
      if (flat < total) c = confusion_pixel<kTrue, kPred, TT, TP>(a, flat);
      add_ordered(hist, c.counted && c.t == c.p ? c.t : -1, c.w);
      add_ordered(hist, c.counted ? K + c.t : -1, c.w);
      add_ordered(hist, c.counted ? 2 * K + c.p : -1, c.w);
    }
  }
  __syncthreads();
  for (int j = threadIdx.x; j < n; j += kCountThreads) {
    double s = 0.0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += warp_hists[w * n + j];
    a.workspace[int64_t(blockIdx.x) * n + j] = s;
  }
}

// counts[j] = the blocks' partials of count j, added in block order.
__global__ void add_partials(const double* partials, int64_t blocks, int64_t n, double* counts) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  double s = 0.0;
  for (int64_t b = 0; b < blocks; ++b) s += partials[b * n + j];
  counts[j] = s;
}

// The grid of the ordered path for a shape: 0 where the atomics take the counts.
int64_t ordered_blocks(const ConfusionArgs& a) {
  if (!confusion_cuda_fixed_order(a)) return 0;
  const int64_t tiles = (a.batch * a.pixels + kCountTile - 1) / kCountTile;
  return tiles < kOrderedBlocks ? tiles : kOrderedBlocks;
}

__global__ void narrow_counts(const double* counts, int64_t n, float* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = static_cast<float>(counts[i]);
}

}  // namespace
}  // namespace cuda_detail

using namespace cuda_detail;

int64_t confusion_workspace_doubles_cuda(const ConfusionArgs& a) { return ordered_blocks(a) * 3 * a.num_classes; }

std::string confusion_counts_cuda(const ConfusionArgs& a, void* stream_handle, float* narrow) {
  if (std::string problem = confusion_input_problem(a); !problem.empty()) return problem;
  if (std::string problem = cuda_driver_problem(); !problem.empty()) return problem;
  cudaGetLastError();  // an error left by an earlier call is not this launch's
  const auto stream = static_cast<cudaStream_t>(stream_handle);
  const int64_t n = 3 * a.num_classes;
  const cudaError_t zero = cudaMemsetAsync(a.counts, 0, static_cast<size_t>(n) * sizeof(double), stream);
  if (zero != cudaSuccess) return std::string("fastiou confusion counts: ") + cudaGetErrorString(zero);
  const int64_t tiles = (a.batch * a.pixels + kCountTile - 1) / kCountTile;
  std::string error = check_grid(tiles);
  if (!error.empty()) return error;
  const int64_t ordered = ordered_blocks(a);
  const bool in_shared = a.num_classes <= kSharedClasses;
  const bool ran = dispatch_confusion(a, [&](auto true_rule, auto pred_rule, auto tt, auto pt) {
    constexpr ClassRule kTrue = decltype(true_rule)::value;
    constexpr ClassRule kPred = decltype(pred_rule)::value;
    using TT = decltype(tt);
    using TP = decltype(pt);
    if (tiles == 0) return;
    if (ordered > 0) {
      const size_t bytes = static_cast<size_t>(kWarps * n) * sizeof(double);
      count_pixels_ordered<kTrue, kPred, TT, TP>
          <<<static_cast<unsigned>(ordered), kCountThreads, bytes, stream>>>(a, tiles);
      // A failed launch above stays the runtime's last error, checked below.
      add_partials<<<static_cast<unsigned>((n + kCountThreads - 1) / kCountThreads), kCountThreads, 0, stream>>>(
          a.workspace, ordered, n, a.counts);
      return;
    }
    const size_t bytes = in_shared ? static_cast<size_t>(n) * sizeof(double) : 0;
    dispatch_bool(in_shared, [&](auto shared) {
      count_pixels<kTrue, kPred, TT, TP, decltype(shared)::value>
          <<<static_cast<unsigned>(tiles), kCountThreads, bytes, stream>>>(a);
    });
  });
  if (!ran) return confusion_input_problem(a);
  error = launch_status("fastiou confusion kernel");
  if (!error.empty() || narrow == nullptr) return error;
  narrow_counts<<<static_cast<unsigned>((n + kCountThreads - 1) / kCountThreads), kCountThreads, 0, stream>>>(
      a.counts, n, narrow);
  return launch_status("fastiou confusion counts");
}

}  // namespace fastiou
