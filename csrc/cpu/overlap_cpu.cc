// C++ kernels for the binary/multi-label overlap statistics and gradient.
//
// One pass over the masks: each chunk of pixels accumulates its sums in
// registers and writes 3 doubles per channel to the workspace; a short serial
// pass then adds the chunks of every group in a fixed order. The chunking
// depends on the shape alone, so results are bitwise the same on any number of
// threads.
//
// This file is compiled once per SIMD level (CMakeLists.txt); each copy lives
// in its level's namespace (core/simd_level.h) and cpu_dispatch.cc calls the
// one this CPU runs.
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dispatch.h"
#include "core/overlap_kernels.h"
#include "core/overlap_math.h"
#include "core/pixel_math.h"
#include "cpu/pixel_tile.h"
// After the headers above, which open the level's namespace as inline.
#include "cpu/cpu_levels.h"

#if !defined(FASTIOU_CPU_LEVEL_NS)
#error "overlap_cpu.cc is compiled once per SIMD level, with FASTIOU_CPU_LEVEL_NS naming the level (CMakeLists.txt)"
#endif

namespace fastiou {
FASTIOU_LEVEL_BEGIN
namespace {

struct ChunkRange {
  int64_t image;
  int64_t first_pixel;
  int64_t pixels;
};

ChunkRange chunk_range(const OverlapGeometry& g, int64_t chunk) {
  const int64_t per_image = g.chunks_per_image();
  const int64_t cp = g.chunk_pixels();
  ChunkRange r;
  r.image = chunk / per_image;
  r.first_pixel = (chunk % per_image) * cp;
  r.pixels = std::min(cp, g.pixels - r.first_pixel);
  return r;
}

// Pointers to one chunk's inputs.
template <typename TP, typename TT>
struct ChunkInputs {
  ChunkRange r;
  int64_t base;      // first element of the chunk
  const TP* pred;
  const TT* tru;     // element targets
  const TT* labels;  // sparse targets, one per pixel
  const TP* w;
  int64_t w_stride;  // weights per pixel: 1 or channels

  ChunkInputs(const OverlapInputs& a, int64_t chunk) {
    const OverlapGeometry& g = a.geometry;
    r = chunk_range(g, chunk);
    const int64_t first = r.image * g.pixels + r.first_pixel;
    base = first * g.channels;
    pred = static_cast<const TP*>(a.y_pred) + base;
    tru = static_cast<const TT*>(a.y_true) + base;
    labels = static_cast<const TT*>(a.y_true) + first;
    w_stride = g.weights_per_pixel ? 1 : g.channels;
    w = a.weights ? static_cast<const TP*>(a.weights) + first * w_stride : nullptr;
  }
};

using cpu::ChunkBad;
using cpu::thread_scratch;

// The channel path (element targets, or sparse labels with a weight per
// element): one pixel at a time, its channels across the vector lanes.
// pixel_probabilities puts the pixel's probabilities in p[0, C): as stored,
// the sigmoid of each channel or the softmax (softmax_inplace).
template <bool kLogits, typename TP, typename A>
void pixel_probabilities(const PixelRule& rule, const TP* pred, A* p) {
  const Channel C = static_cast<Channel>(rule.channels);
  for (Channel c = 0; c < C; ++c) p[c] = load_as<A>(pred[c]);
  if constexpr (kLogits) {
    if (rule.softmax) {
      softmax_inplace(p, C);
    } else {
      for (Channel c = 0; c < C; ++c) p[c] = sigmoid(p[c]);
    }
  }
}

template <bool kLogits, bool kWeights, typename TP, typename TT>
void stats_chunk(const StatsArgs& a, int64_t chunk, double* partial, ChunkBad* bad) {
  using A = typename AccOf<TP>::type;
  const OverlapGeometry& g = a.geometry;
  const int64_t C = g.channels;
  const ChunkInputs<TP, TT> in(a, chunk);
  const ChunkRange& r = in.r;
  const TP* pred = in.pred;
  const TT* tru = in.tru;
  const TT* labels = in.labels;
  const TP* w = in.w;
  const PixelRule rule = make_pixel_rule(a);
  if (single_channel_path(rule)) {
    // kLanes elements at a time, one per vector lane, each lane with its own
    // sums, added across the lanes in a fixed order at the end (the tail's
    // elements go to lanes 0, 1, ... in turn): the result depends on the
    // build's vector width only, never on the run or the thread count. The
    // inputs are prefetched ahead (cpu::prefetch_ahead).
    // seen: the range guards' register (cpu::widen_range), per lane too;
    // without check_range the loop is built without it.
    dispatch_bool(rule.check_range, [&](auto guard) {
      constexpr bool kGuard = decltype(guard)::value;
      constexpr int kLanes = cpu::kLanes;
      A si[kLanes] = {}, sp[kLanes] = {}, st[kLanes] = {};
      FloatBits<A> seen[kLanes] = {};
      auto element = [&](int64_t i, int l) {
        const A x = load_as<A>(pred[i]);
        const A t = load_as<A>(tru[i]);
        if constexpr (kGuard) {
          cpu::widen_range(t, seen[l]);
          if constexpr (!kLogits) cpu::widen_range(x, seen[l]);
        }
        const A wv = kWeights ? load_as<A>(w[i]) : A(1);
        accumulate_overlap(probability<kLogits>(x), t, wv, si[l], sp[l], st[l]);
      };
      const int64_t n = r.pixels;
      const int64_t whole = n - n % kLanes;
      for (int64_t b = 0; b < whole; b += kLanes) {
        cpu::prefetch_ahead(pred + b, kLanes);
        cpu::prefetch_ahead(tru + b, kLanes);
        if constexpr (kWeights) cpu::prefetch_ahead(w + b, kLanes);
        FASTIOU_SIMD
        for (int l = 0; l < kLanes; ++l) element(b + l, l);
      }
      for (int64_t i = whole; i < n; ++i) element(i, static_cast<int>(i - whole));
      bool alarm = false;
      for (int l = 0; l < kLanes; ++l) alarm = alarm || cpu::range_alarm<A>(seen[l]);
      if (kGuard && alarm) *bad = cpu::first_bad_value<kLogits>(rule, pred, tru, labels, n, r.first_pixel);
      partial[0] = cpu::add_lanes(si);
      partial[1] = cpu::add_lanes(sp);
      partial[2] = cpu::add_lanes(st);
    });
    return;
  }
  if constexpr (cpu::kLabelType<TT>) {
    if (cpu::tile_path(rule, kWeights)) {
      // The tile path guards the probabilities only: from logits it has
      // nothing to guard.
      auto tile = [&](auto guard) {
        cpu::tile_stats_chunk<kLogits, kWeights, decltype(guard)::value>(rule, pred, labels, w, r.pixels,
                                                                        r.first_pixel, partial, bad);
      };
      if constexpr (kLogits) {
        tile(std::false_type{});
      } else {
        dispatch_bool(rule.check_range, tile);
      }
      return;
    }
  }
  // Sums per channel over the chunk's pixels, in pixel order.
  A* p = thread_scratch<A>(4 * C);
  A* si = p + C;
  A* sp = si + C;
  A* st = sp + C;
  std::fill(si, si + 3 * C, A(0));
  // The range guards' register (cpu::widen_range): the targets, and the
  // probabilities as stored. Kept without check_range too (it costs nothing
  // measurable next to this path's per-pixel work), but not acted on.
  FloatBits<A> seen = 0;
  for (int64_t px = 0; px < r.pixels; ++px) {
    const PixelLabel label = read_pixel_label(rule, labels, px);
    bad->note_label(label, r.first_pixel + px);
    if (!pixel_counts(label)) continue;
    pixel_probabilities<kLogits>(rule, pred + px * C, p);
    const TP* wp = kWeights ? pixel_weights(rule, w, px) : nullptr;
    with_pixel_weight<A>(rule, wp, [&](const auto& weight) {
      with_pixel_targets<A>(label, pixel_targets(rule, tru, px), [&](const auto& target) {
        FloatBits<A> s = seen;  // a reduction on a local, not on a capture
#pragma omp simd reduction(max : s)
        for (Channel c = 0; c < static_cast<Channel>(C); ++c) {
          const A t = target(c);
          cpu::widen_range(t, s);
          if constexpr (!kLogits) cpu::widen_range(p[c], s);
          accumulate_overlap(p[c], t, weight(c), si[c], sp[c], st[c]);
        }
        seen = s;
      });
    });
  }
  if (rule.check_range && cpu::range_alarm<A>(seen) && !bad->found())
    *bad = cpu::first_bad_value<kLogits>(rule, pred, tru, labels, r.pixels, r.first_pixel);
  for (int64_t c = 0; c < C; ++c) {
    partial[3 * c] = si[c];
    partial[3 * c + 1] = sp[c];
    partial[3 * c + 2] = st[c];
  }
}

// Adds the chunk partials of every group in a fixed order and writes the sums.
template <typename A>
void reduce_partials(const StatsArgs& a) {
  const OverlapGeometry& g = a.geometry;
  const int64_t C = g.channels;
  const int64_t per_image = g.chunks_per_image();
  A* out[3] = {static_cast<A*>(a.intersection), static_cast<A*>(a.pred_sum),
               static_cast<A*>(a.true_sum)};
  const int64_t groups = g.groups(a.per_image);
  double* total = thread_scratch<double, 3>(3 * groups);
  std::fill(total, total + 3 * groups, 0.0);
  for (int64_t b = 0; b < g.batch; ++b) {
    const int64_t row = a.per_image ? b * C : 0;
    for (int64_t k = 0; k < per_image; ++k) {
      const double* part = a.workspace + (b * per_image + k) * C * 3;
      for (int64_t c = 0; c < C; ++c)
        for (int j = 0; j < 3; ++j) total[3 * (row + c) + j] += part[3 * c + j];
    }
  }
  for (int64_t q = 0; q < groups; ++q)
    for (int j = 0; j < 3; ++j) out[j][q] = static_cast<A>(total[3 * q + j]);
}

// Asks the OS to back a large, not yet touched output buffer with huge pages.
// A fresh mask-sized output otherwise costs one page fault per 4 KiB on first
// write, which takes as long as the whole gradient pass; with 2 MiB pages the
// pass runs at memory speed. A hint only: nothing changes where the OS says no.
void advise_huge_pages(void* data, int64_t bytes) {
#if defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (bytes < int64_t(8 * kHuge)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

int64_t cycles_per_element(bool from_logits) { return from_logits ? 24 : 6; }

template <typename TP, typename TT>
struct StatsCpu {
  static void run(const StatsArgs& a, const ParallelFor& parallel_for, std::string* error) {
    using A = typename AccOf<TP>::type;
    const OverlapGeometry& g = a.geometry;
    std::vector<ChunkBad> bad(static_cast<size_t>(g.chunks()));
    auto body = [&](auto logits, auto weights) {
      constexpr bool kLogits = decltype(logits)::value;
      constexpr bool kWeights = decltype(weights)::value;
      parallel_for(g.chunks(), g.chunk_pixels() * g.channels * cycles_per_element(kLogits),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t chunk = begin; chunk < end; ++chunk)
                       stats_chunk<kLogits, kWeights, TP, TT>(
                           a, chunk, a.workspace + chunk * g.channels * 3, &bad[chunk]);
                   });
    };
    dispatch_bool(a.from_logits, [&](auto logits) {
      dispatch_bool(a.weights != nullptr, [&](auto weights) { body(logits, weights); });
    });
    for (int64_t chunk = 0; chunk < static_cast<int64_t>(bad.size()); ++chunk) {
      if (!bad[chunk].found()) continue;
      *error = bad_input_message(a, chunk / g.chunks_per_image(), bad[chunk].input());
      return;
    }
    reduce_partials<A>(a);
  }
};

// stream: whether the output takes streaming stores (cpu::store_values).
template <bool kLogits, bool kWeights, bool kWrtTrue, typename TP, typename TT>
void grad_chunk(const GradArgs& a, int64_t chunk, bool stream) {
  using A = typename AccOf<TP>::type;
  const OverlapGeometry& g = a.geometry;
  const int64_t C = g.channels;
  const ChunkInputs<TP, TT> in(a, chunk);
  const ChunkRange& r = in.r;
  const TP* pred = in.pred;
  const TT* tru = in.tru;
  const TT* labels = in.labels;
  const TP* w = in.w;
  TP* __restrict out = static_cast<TP*>(a.output) + in.base;
  const int64_t row = a.per_image ? r.image * C : 0;
  const A* gi = static_cast<const A*>(a.grad_intersection) + row;
  const A* gp = static_cast<const A*>(a.grad_pred_sum) + row;
  const A* gt = static_cast<const A*>(a.grad_true_sum) + row;
  // Probabilities need the prediction only for the sigmoid's Jacobian or for
  // the gradient with respect to the target.
  constexpr bool kNeedsPred = kLogits || kWrtTrue;
  auto element = [&](int64_t i, int64_t wi, A g_i, A g_p, A g_t) -> TP {
    const A p = kNeedsPred ? probability<kLogits>(load_as<A>(pred[i])) : A(0);
    const A wv = kWeights ? load_as<A>(w[wi]) : A(1);
    if constexpr (kWrtTrue) {
      return store_as<TP>(true_gradient(p, wv, g_i, g_t));
    } else {
      return store_as<TP>(pred_gradient<kLogits>(p, load_as<A>(tru[i]), wv, g_i, g_p));
    }
  };
  const PixelRule rule = make_pixel_rule(a);
  if (single_channel_path(rule)) {
    // The group's gradients in registers: the loop then vectorizes.
    const A g_i = gi[0], g_p = gp[0], g_t = gt[0];
    cpu::store_values(
        out, r.pixels, stream, [&](int64_t i) { return element(i, i, g_i, g_p, g_t); },
        [&](int64_t i, int64_t values) {
          if constexpr (kNeedsPred) cpu::prefetch_ahead(pred + i, values);
          if constexpr (!kWrtTrue) cpu::prefetch_ahead(tru + i, values);
          if constexpr (kWeights) cpu::prefetch_ahead(w + i, values);
        });
    cpu::stream_fence(stream);
    return;
  }
  if constexpr (cpu::kLabelType<TT>) {
    if (cpu::tile_path(rule, kWeights)) {
      if constexpr (kNeedsPred) {
        cpu::tile_grad_chunk<kLogits, kWeights, kWrtTrue>(rule, pred, labels, w, r.pixels, gi, gp, gt, out, stream);
        return;
      } else if constexpr (!kWeights) {
        // From probabilities the gradient needs no prediction: whole tiles
        // of two values per channel.
        cpu::periodic_grad_chunk<TP>(rule, labels, r.pixels, gi, gp, gt, out, stream);
        return;
      }
    }
  }
  A* p = thread_scratch<A>(C);
  dispatch_grad_kind(grad_kind(rule, kWrtTrue), [&](auto kind) {
    for (int64_t px = 0; px < r.pixels; ++px) {
      TP* o = out + px * C;
      const PixelLabel label = read_pixel_label(rule, labels, px);
      if (kNeedsPred && pixel_has_gradient(label)) pixel_probabilities<kLogits>(rule, pred + px * C, p);
      const TP* wp = kWeights ? pixel_weights(rule, w, px) : nullptr;
      with_pixel_weight<A>(rule, wp, [&](const auto& weight) {
        pixel_gradient<decltype(kind)::value>(
            rule, label, pixel_targets(rule, tru, px), [p](int64_t c) { return p[c]; }, weight, gi, gp, gt,
            [o](int64_t c, A v) { o[c] = store_as<TP>(v); });
      });
    }
  });
}

template <typename TP, typename TT>
struct GradCpu {
  static void run(const GradArgs& a, const ParallelFor& parallel_for, std::string*) {
    const OverlapGeometry& g = a.geometry;
    const int64_t bytes = g.elements() * static_cast<int64_t>(sizeof(TP));
    advise_huge_pages(a.output, bytes);
    const bool stream = bytes >= cpu::kStreamBytes;
    dispatch_bool(a.from_logits, [&](auto logits) {
      dispatch_bool(a.weights != nullptr, [&](auto weights) {
        dispatch_bool(a.wrt_true, [&](auto wrt_true) {
          constexpr bool kLogits = decltype(logits)::value;
          constexpr bool kWeights = decltype(weights)::value;
          constexpr bool kWrtTrue = decltype(wrt_true)::value;
          parallel_for(g.chunks(), g.chunk_pixels() * g.channels * cycles_per_element(kLogits),
                       [&](int64_t begin, int64_t end) {
                         for (int64_t chunk = begin; chunk < end; ++chunk)
                           grad_chunk<kLogits, kWeights, kWrtTrue, TP, TT>(a, chunk, stream);
                       });
        });
      });
    });
  }
};

}  // namespace

std::string overlap_stats_level(const StatsArgs& args, const ParallelFor& parallel_for) {
  // Bool targets are read through uint8_t (one byte holding 0 or 1).
  return run_for_dtypes<StatsCpu, /*kBoolAsByte=*/true>(args, parallel_for);
}

std::string overlap_grad_level(const GradArgs& args, const ParallelFor& parallel_for) {
  return run_for_dtypes<GradCpu, /*kBoolAsByte=*/true>(args, parallel_for);
}

FASTIOU_LEVEL_END
}  // namespace fastiou
