// Shared pieces of fastiou's CUDA kernels: the tiling, the kernels' view of
// their inputs, vector packs and block reductions. Included by the .cu files
// of the stats and gradient kernels only.
//
// The per-element math comes from core/overlap_math.h, the same functions the
// C++ kernels call. Each kernel reads its inputs once: a block owns one tile of
// one image, accumulates in registers, reduces through CUB's block primitive
// and writes one partial per channel; a second small kernel adds the partials
// of every group in a fixed order (in double). The tiles depend on the shape
// alone and no float atomics touch a result, so the sums are bitwise the same
// on every run. Indices are int64 throughout; 16-bit predictions are loaded as
// stored and converted in registers; the math runs in float (double for
// float64 predictions).
#pragma once

#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>
#include <cstdint>
#include <string>

#include "core/dispatch.h"
#include "core/overlap_kernels.h"
#include "core/overlap_math.h"
#include "core/pixel_math.h"

namespace fastiou {
namespace cuda_detail {
constexpr int kThreads = 256;
// Single-channel path: elements per tile, 32 per thread.
constexpr int64_t kTileElements = 8192;
// Per-pixel path (several channels, softmax or sparse labels): pixels per
// thread, kept in registers while the channels are walked.
constexpr int kPixelsPerThread = 4;
constexpr int64_t kTilePixels = int64_t(kThreads) * kPixelsPerThread;
constexpr unsigned long long kNoBadLabel = ~0ull;
// Partials one block of the final reduction adds per level (8 per thread).
constexpr int64_t kReduceSpan = int64_t(kThreads) * 8;

// The problem as the CUDA kernels see it. Sums over the whole batch do not
// depend on image boundaries, so without per_image the batch is viewed as one
// long image: tiles then run across images, and batches of small images still
// give full tiles. Group g of the sums is (image g / C, channel g % C).
struct Layout {
  int64_t batch = 0;
  int64_t pixels = 0;
  int64_t channels = 0;
  bool single = false;  // one channel, element targets, no softmax: the elementwise path
  int64_t tile_pixels = 1;
  int64_t tiles_per_image = 0;

  int64_t tiles() const { return batch * tiles_per_image; }
  int64_t groups() const { return batch * channels; }
};

inline Layout make_layout(const OverlapInputs& in) {
  const OverlapGeometry& g = in.geometry;
  Layout l;
  l.batch = in.per_image ? g.batch : 1;
  l.pixels = in.per_image ? g.pixels : g.batch * g.pixels;
  l.channels = g.channels;
  l.single = single_channel_path(make_pixel_rule(in));
  l.tile_pixels = l.single ? kTileElements : kTilePixels;
  l.tiles_per_image = g.channels > 0 ? (l.pixels + l.tile_pixels - 1) / l.tile_pixels : 0;
  return l;
}

// What every kernel reads, passed by value.
template <typename TP, typename TT>
struct Inputs {
  const TP* pred;
  const TT* tru;  // element targets, or one sparse label per pixel
  const TP* w;    // nullptr for unit weights
  int64_t pixels;
  int64_t tiles_per_image;
  PixelRule rule;  // channels, activation, label options: the per-pixel decisions
};

template <typename TP, typename TT>
Inputs<TP, TT> make_inputs(const OverlapInputs& a, const Layout& l) {
  Inputs<TP, TT> in;
  in.pred = static_cast<const TP*>(a.y_pred);
  in.tru = static_cast<const TT*>(a.y_true);
  in.w = static_cast<const TP*>(a.weights);
  in.pixels = l.pixels;
  in.tiles_per_image = l.tiles_per_image;
  in.rule = make_pixel_rule(a);
  return in;
}

// The tile a block owns: its image and its first pixel.
struct Tile {
  int64_t image;
  int64_t first;  // flat pixel index over (image, pixel) of the tile's first pixel
  int64_t count;  // pixels in the tile
};

__device__ __forceinline__ Tile block_tile(int64_t pixels, int64_t tiles_per_image, int64_t tile_pixels) {
  const int64_t tile = blockIdx.x;
  Tile t;
  t.image = tile / tiles_per_image;
  const int64_t offset = (tile - t.image * tiles_per_image) * tile_pixels;
  t.first = t.image * pixels + offset;
  t.count = min(tile_pixels, pixels - offset);
  return t;
}

template <typename T>
struct Sum3 {
  T i, p, t;
};

struct Sum3Add {
  template <typename T>
  __device__ __forceinline__ Sum3<T> operator()(const Sum3<T>& a, const Sum3<T>& b) const {
    return Sum3<T>{a.i + b.i, a.p + b.p, a.t + b.t};
  }
};

// N consecutive values moved by one (or a few) 16-byte accesses.
template <typename T, int N>
struct alignas(sizeof(T) * N < 16 ? sizeof(T) * N : 16) Pack {
  T v[N];
};

// Values of a prediction type per 16 bytes.
template <typename TP>
struct VectorWidth {
  static constexpr int value = sizeof(TP) >= 16 ? 1 : int(16 / sizeof(TP));
};

template <typename T, int N>
__device__ __forceinline__ bool pack_aligned(const T* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % alignof(Pack<T, N>) == 0;
}

// A pixel as the per-pixel kernels see it. Every decision about it (its kind,
// whether it counts, its targets, weights and probabilities) is made by the
// functions of core/pixel_math.h, which the C++ kernels call too.
template <typename A>
struct PixelState {
  int64_t pixel;     // flat pixel index over (image, pixel)
  bool in_tile;      // a pixel of this block's tile (the last tile may be short); nothing
                     // about a pixel outside the tile is read or written
  PixelLabel label;  // dense, a class, ignored or out of range; set only when in_tile
  SoftmaxNorm<A> norm;
};

template <typename A, typename TP, typename TT>
__device__ __forceinline__ PixelState<A> load_pixel(const Inputs<TP, TT>& in, const Tile& tile, int k) {
  PixelState<A> s;
  const int64_t local = threadIdx.x + int64_t(k) * kThreads;
  s.in_tile = local < tile.count;
  s.pixel = tile.first + local;
  s.label = PixelLabel{PixelKind::kIgnored, 0};
  s.norm = SoftmaxNorm<A>{A(0), A(1)};
  if (!s.in_tile) return s;
  s.label = read_pixel_label(in.rule, in.tru, s.pixel);
  if (pixel_needs_softmax(in.rule, s.label)) {
    const TP* z = in.pred + s.pixel * in.rule.channels;
    s.norm = softmax_norm<A>([&](int64_t c) { return load_as<A>(z[c]); }, in.rule.channels);
  }
  return s;
}

template <typename A, typename TP, typename TT>
__device__ __forceinline__ A state_probability(const Inputs<TP, TT>& in, const PixelState<A>& s, int64_t c) {
  return channel_probability(in.rule, load_as<A>(in.pred[s.pixel * in.rule.channels + c]), s.norm);
}

template <typename A, typename TP, typename TT>
__device__ __forceinline__ A state_target(const Inputs<TP, TT>& in, const PixelState<A>& s, int64_t c) {
  return pixel_target<A>(s.label, pixel_targets(in.rule, in.tru, s.pixel), c);
}

template <typename A, typename TP, typename TT>
__device__ __forceinline__ A state_weight(const Inputs<TP, TT>& in, const PixelState<A>& s, int64_t c) {
  return pixel_weight<A>(in.rule, pixel_weights(in.rule, in.w, s.pixel), c);
}

// What a call checks before it launches anything: the label dtype and the
// driver. Then clears an error left by an earlier call, which is not this
// launch's. Empty, or the problem.
inline std::string launch_problem(const OverlapInputs& args) {
  std::string problem = validate_label_dtype(args, args.true_dtype);
  if (problem.empty()) problem = cuda_driver_problem();
  if (problem.empty()) cudaGetLastError();
  return problem;
}

inline std::string launch_status(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return std::string();
  return std::string(what) + ": " + cudaGetErrorString(err);
}

constexpr int64_t kMaxBlocks = 0x7fffffff;

inline std::string check_grid(int64_t blocks) {
  if (blocks <= kMaxBlocks) return std::string();
  return "tensor too large for one launch (" + std::to_string(blocks) + " blocks)";
}

}  // namespace cuda_detail
}  // namespace fastiou
