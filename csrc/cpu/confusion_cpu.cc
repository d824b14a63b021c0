// The C++ kernel of the confusion counts of fastiou's metrics (core/confusion.h).
//
// One pass over the masks. Each chunk of pixels (OverlapGeometry's chunking,
// fixed by the shape) is walked in blocks: the pixels' two classes are
// computed first into small arrays (class indices converted, thresholds
// compared and argmaxes taken by loops that vectorize); the
// block is then counted, with per-class vector sums for a few classes and a
// histogram split in interleaved copies (no store waits on the one before)
// for more. Unweighted counts are integers (exact); a short serial pass adds
// the chunks in order, so counts are bitwise the same on any thread count.
//
// Compiled once per SIMD level, like overlap_cpu.cc (core/simd_level.h).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "core/confusion_math.h"
#include "core/dispatch.h"
#include "cpu/pixel_tile.h"
// After the headers above, which open the level's namespace as inline.
#include "cpu/cpu_levels.h"

#if !defined(FASTIOU_CPU_LEVEL_NS)
#error "confusion_cpu.cc is compiled once per SIMD level, with FASTIOU_CPU_LEVEL_NS naming the level (CMakeLists.txt)"
#endif

namespace fastiou {
FASTIOU_LEVEL_BEGIN
namespace {

constexpr int64_t kBlock = 512;        // pixels classified before they are counted
constexpr int64_t kSmallClasses = 4;   // up to this many: per-class vector sums
constexpr int64_t kJointUpTo = 32;     // up to this many: interleaved joint histograms (count_joint)
constexpr int64_t kHistCopies = 4;     // interleaved histograms, for up to kCopiesUpTo classes
constexpr int64_t kCopiesUpTo = 4096;

// The argmax classes of n pixels of C channels each, at x. A pixel's
// channels are a chain of dependent compare-and-selects, so one pixel at a
// time waits on each step's latency; instead kLanes pixels go side by side,
// one per vector lane: each tile is read transposed (cpu::load_tile), then
// every channel is one vector step (argmax_step) on the values as stored; a
// tile where argmax_needs_keys says the reading matters is stepped again
// through argmax_key (the rules of argmax_class, so the classes are the
// same). The last pixels, fewer than a tile, go one at a time.
template <typename T>
void argmax_classes(const T* x, int64_t channels, int64_t n, int32_t* out) {
  using A = ArgmaxValue<T>;
  const Channel C = static_cast<Channel>(channels);
  constexpr int kLanes = cpu::kLanes;
  A* tile = cpu::thread_scratch<A, 5>(cpu::transposed_tile_values(C));
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const T* px = x + i * channels;
    cpu::prefetch_tiles_ahead(px, kLanes * channels);
    cpu::load_tile(px, C, tile);
    A best[kLanes];
    int32_t at[kLanes];
    // The values as stored first; a tile where some pixel's largest value is
    // a zero or a subnormal is compared again by argmax_key.
    auto argmax_tile = [&](auto keyed) {
      FASTIOU_SIMD
      for (int l = 0; l < kLanes; ++l) {
        best[l] = argmax_lowest<A>();
        at[l] = 0;
      }
      for (Channel c = 0; c < C; ++c) {
        const A* v = tile + int64_t(c) * kLanes;
        FASTIOU_SIMD
        for (int l = 0; l < kLanes; ++l) {
          if constexpr (decltype(keyed)::value) {
            argmax_step(argmax_key(v[l]), c, best[l], at[l]);
          } else {
            argmax_step(v[l], c, best[l], at[l]);
          }
        }
      }
    };
    argmax_tile(std::false_type{});
    int32_t again = 0;
    FASTIOU_SIMD_REDUCE(|, again)
    for (int l = 0; l < kLanes; ++l) again |= argmax_needs_keys(best[l]) ? 1 : 0;
    if (again) argmax_tile(std::true_type{});
    for (int l = 0; l < kLanes; ++l) out[i + l] = at[l];
  }
  for (; i < n; ++i) out[i] = argmax_class(x + i * channels, channels);
}

// The classes of n pixels by kRule; x points at the first pixel's channels.
template <ClassRule kRule, typename T>
void block_classes(const T* x, int64_t channels, int64_t n, float threshold, int32_t* out) {
  if constexpr (kRule == ClassRule::kIndex) {
    FASTIOU_SIMD
    for (int64_t i = 0; i < n; ++i) out[i] = index_class(x[i]);
  } else if constexpr (kRule == ClassRule::kThreshold) {
    FASTIOU_SIMD
    for (int64_t i = 0; i < n; ++i) out[i] = threshold_class(x[i], threshold);
  } else {
    argmax_classes(x, channels, n, out);
  }
}

// The weight of each of n pixels (zero where the pixel does not count); the
// classes of pixels that do not count become 0, so that counting them adds
// zeros and never indexes out of range. w_first: the first pixel's weight,
// w_step 1 (one per pixel) or 0 (one for the image); nullptr for none.
template <typename Count, typename TW>
void block_weights(const ConfusionOptions& o, int32_t* t, int32_t* p, const TW* w_first, int64_t w_step, int64_t n,
                   Count* w) {
  const ConfusionOptions opt = o;  // locals: nothing the loop stores can change them
  auto run = [&](auto integer) {
    constexpr bool kInteger = decltype(integer)::value;
    FASTIOU_SIMD
    for (int64_t i = 0; i < n; ++i) {
      const bool ok = pixel_counted(opt, t[i], p[i]);
      Count wv = Count(1);
      if constexpr (!std::is_same_v<TW, void>) {
        wv = static_cast<Count>(pixel_weight_value(kInteger, static_cast<double>(w_first[i * w_step])));
      }
      w[i] = ok ? wv : Count(0);
      t[i] = ok ? t[i] : 0;
      p[i] = ok ? p[i] : 0;
    }
  };
  dispatch_bool(opt.integer_weights && !std::is_same_v<TW, void>, run);
}

// Adds a block to counts (tp[K], true[K], pred[K]) by per-class sums.
template <typename Count>
void count_small(int64_t K, const int32_t* t, const int32_t* p, const Count* w, int64_t n, Count* counts) {
  for (int32_t k = 0; k < static_cast<int32_t>(K); ++k) {
    Count a = 0, b = 0, c = 0;
#pragma omp simd reduction(+ : a, b, c)
    for (int64_t i = 0; i < n; ++i) {
      const bool tk = t[i] == k, pk = p[i] == k;
      a += (tk && pk) ? w[i] : Count(0);
      b += tk ? w[i] : Count(0);
      c += pk ? w[i] : Count(0);
    }
    counts[k] += a;
    counts[K + k] += b;
    counts[2 * K + k] += c;
  }
}

// Adds a block to `copies` interleaved histograms of 3K counts each.
template <typename Count>
void count_histogram(int64_t K, const int32_t* t, const int32_t* p, const Count* w, int64_t n, Count* hist,
                     int64_t copies) {
  for (int64_t i = 0; i < n; ++i) {
    Count* h = hist + (copies == kHistCopies ? (i & (kHistCopies - 1)) : 0) * 3 * K;
    const int32_t ti = t[i], pi = p[i];
    const Count wi = w[i];
    h[ti] += ti == pi ? wi : Count(0);
    h[K + ti] += wi;
    h[2 * K + pi] += wi;
  }
}

// Adds a block to kHistCopies interleaved joint histograms of K * K counts
// (target class major): one addition per pixel, where count_histogram takes
// three.
template <typename Count>
void count_joint(int64_t K, const int32_t* t, const int32_t* p, const Count* w, int64_t n, Count* joint) {
  for (int64_t i = 0; i < n; ++i) joint[(i & (kHistCopies - 1)) * K * K + t[i] * K + p[i]] += w[i];
}

// The chunk's counts (tp[K], true[K], pred[K]) from its joint histograms:
// the copies added in order, then the diagonal, the rows and the columns.
template <typename Count>
void joint_partial(int64_t K, Count* joint, double* partial) {
  const int64_t KK = K * K;
  for (int64_t c = 1; c < kHistCopies; ++c) {
    FASTIOU_SIMD
    for (int64_t j = 0; j < KK; ++j) joint[j] += joint[c * KK + j];
  }
  for (int64_t k = 2 * K; k < 3 * K; ++k) partial[k] = 0.0;  // the columns' sums; the rest is set below
  for (int64_t i = 0; i < K; ++i) {
    partial[i] = static_cast<double>(joint[i * K + i]);
    double row = 0.0;
    for (int64_t j = 0; j < K; ++j) {
      const double v = static_cast<double>(joint[i * K + j]);
      row += v;
      partial[2 * K + j] += v;
    }
    partial[K + i] = row;
  }
}

// Counts one chunk: Count int32_t without weights (a chunk has fewer than
// 2^31 pixels), double with.
template <typename Count, ClassRule kTrue, ClassRule kPred, typename TT, typename TP>
void count_chunk_as(const ConfusionArgs& a, int64_t chunk, double* partial) {
  const OverlapGeometry g = a.geometry();
  const int64_t per_image = g.chunks_per_image();
  const int64_t b = chunk / per_image;
  const int64_t first = (chunk % per_image) * g.chunk_pixels();
  const int64_t n = std::min(g.chunk_pixels(), g.pixels - first);
  const int64_t K = a.num_classes;
  const int64_t ct = a.true_channels, cp = a.pred_channels;
  const TT* tru = static_cast<const TT*>(a.y_true) + (b * g.pixels + first) * ct;
  const TP* pred = static_cast<const TP*>(a.y_pred) + (b * g.pixels + first) * cp;
  const bool joint = K > kSmallClasses && K <= kJointUpTo;
  const int64_t copies = K <= kSmallClasses ? 1 : (K <= kCopiesUpTo ? kHistCopies : 1);
  const int64_t size = copies * (joint ? K * K : 3 * K);
  Count* hist = cpu::thread_scratch<Count, 4>(size);
  for (int64_t j = 0; j < size; ++j) hist[j] = Count(0);
  int32_t t[kBlock], p[kBlock];
  Count w[kBlock];
  // The weights of the chunk's image: one per pixel (w_step 1) or one.
  const int64_t w_step = a.weight_cols == 1 ? 0 : 1;
  const int64_t w_offset = weight_offset(a, b, first);
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t m = std::min(kBlock, n - start);
    // Inputs of one value per pixel are asked for ahead of the block
    // (cpu::prefetch_ahead), so that they arrive while the block before is
    // counted; the argmax asks for its own tiles.
    if constexpr (kTrue != ClassRule::kArgmax) cpu::prefetch_ahead(tru + start * ct, m * ct);
    if constexpr (kPred != ClassRule::kArgmax) cpu::prefetch_ahead(pred + start * cp, m * cp);
    block_classes<kTrue>(tru + start * ct, ct, m, a.threshold, t);
    block_classes<kPred>(pred + start * cp, cp, m, a.threshold, p);
    if (!a.has_weights) {
      block_weights<Count, void>(a, t, p, nullptr, 0, m, w);
    } else if (a.weight_dtype == DType::kFloat64) {
      block_weights<Count>(a, t, p, static_cast<const double*>(a.weights) + w_offset + w_step * start, w_step, m, w);
    } else {
      block_weights<Count>(a, t, p, static_cast<const float*>(a.weights) + w_offset + w_step * start, w_step, m, w);
    }
    if (K <= kSmallClasses) {
      count_small(K, t, p, w, m, hist);
    } else if (joint) {
      count_joint(K, t, p, w, m, hist);
    } else {
      count_histogram(K, t, p, w, m, hist, copies);
    }
  }
  if (joint) {
    joint_partial(K, hist, partial);
    return;
  }
  for (int64_t j = 0; j < 3 * K; ++j) {
    double s = 0;
    for (int64_t c = 0; c < copies; ++c) s += static_cast<double>(hist[c * 3 * K + j]);
    partial[j] = s;
  }
}

template <ClassRule kTrue, ClassRule kPred, typename TT, typename TP>
void count_chunk(const ConfusionArgs& a, int64_t chunk, double* partial) {
  if (a.has_weights) {
    count_chunk_as<double, kTrue, kPred, TT, TP>(a, chunk, partial);
  } else {
    count_chunk_as<int32_t, kTrue, kPred, TT, TP>(a, chunk, partial);
  }
}

}  // namespace

std::string confusion_counts_level(const ConfusionArgs& a, const ParallelFor& parallel_for) {
  const OverlapGeometry g = a.geometry();
  const int64_t K = a.num_classes;
  const int64_t chunks = g.chunks();
  const bool ran = dispatch_confusion(a, [&](auto true_rule, auto pred_rule, auto tt, auto pt) {
    constexpr ClassRule kTrue = decltype(true_rule)::value;
    constexpr ClassRule kPred = decltype(pred_rule)::value;
    using TT = decltype(tt);
    using TP = decltype(pt);
    parallel_for(chunks, g.chunk_pixels() * std::max<int64_t>(1, std::max(a.true_channels, a.pred_channels)) * 3,
                 [&](int64_t begin, int64_t end) {
                   for (int64_t chunk = begin; chunk < end; ++chunk)
                     count_chunk<kTrue, kPred, TT, TP>(a, chunk, a.workspace + chunk * 3 * K);
                 });
  });
  if (!ran) return confusion_input_problem(a);
  for (int64_t j = 0; j < 3 * K; ++j) a.counts[j] = 0.0;
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const double* part = a.workspace + chunk * 3 * K;
    for (int64_t j = 0; j < 3 * K; ++j) a.counts[j] += part[j];
  }
  return std::string();
}

FASTIOU_LEVEL_END
}  // namespace fastiou
