// CUDA kernels of the overlap statistics: one pass over the masks, then a
// deterministic reduction of the tile partials.
#include "cuda/overlap_cuda.cuh"

namespace fastiou {
namespace cuda_detail {
namespace {

template <typename A>
__device__ __forceinline__ void write_partial(const Sum3<A>& local, double* out) {
  using Reduce = cub::BlockReduce<Sum3<A>, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const Sum3<A> total = Reduce(temp).Reduce(local, Sum3Add());
  if (threadIdx.x == 0) {
    out[0] = total.i;
    out[1] = total.p;
    out[2] = total.t;
  }
  __syncthreads();  // temp is reused by the caller's next reduction
}

// Lowers *first to `index` (kNoBadLabel: none), with one atomic per warp that
// met a bad value, not one per value: masks of 0/255 or labels of 255 would
// otherwise queue millions on one address. Every lane of the warp calls it.
__device__ __forceinline__ void record_first(unsigned long long index, unsigned long long* first) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) index = min(index, __shfl_down_sync(0xffffffffu, index, offset));
  if ((threadIdx.x & 31) == 0 && index != kNoBadLabel) atomicMin(first, index);
}

// One channel, element targets: a flat stream of (p, t, w), 16-byte loads
// where the tile's data is aligned.
// The range guards (range_problem) on every element, with check_range:
// bad_element gets the lowest flat element index of a target or probability
// outside [0, 1].
template <bool kLogits, typename TP, typename TT>
__global__ void __launch_bounds__(kThreads)
    stats_single(Inputs<TP, TT> in, double* partials, unsigned long long* bad_element) {
  using A = typename AccOf<TP>::type;
  constexpr int V = VectorWidth<TP>::value;
  const Tile tile = block_tile(in.pixels, in.tiles_per_image, kTileElements);
  const TP* pred = in.pred + tile.first;
  const TT* tru = in.tru + tile.first;
  const TP* w = in.w ? in.w + tile.first : nullptr;
  Sum3<A> s{A(0), A(0), A(0)};
  unsigned long long bad = kNoBadLabel;  // the thread's lowest bad element
  const bool guard = in.rule.check_range;
  auto add = [&](int64_t i, TP x, TT t, A wv) {
    const A xv = load_as<A>(x);
    const A tv = load_as<A>(t);
    if (guard && range_problem(kLogits, tv, xv) != InputProblem::kNone)
      bad = min(bad, static_cast<unsigned long long>(tile.first + i));
    accumulate_overlap(probability<kLogits>(xv), tv, wv, s.i, s.p, s.t);
  };
  int64_t done = 0;
  if (pack_aligned<TP, V>(pred) && pack_aligned<TT, V>(tru) && pack_aligned<TP, V>(w)) {
    const int64_t packs = tile.count / V;
#pragma unroll 2
    for (int64_t j = threadIdx.x; j < packs; j += kThreads) {
      const Pack<TP, V> pp = reinterpret_cast<const Pack<TP, V>*>(pred)[j];
      const Pack<TT, V> tt = reinterpret_cast<const Pack<TT, V>*>(tru)[j];
      if (w) {
        const Pack<TP, V> ww = reinterpret_cast<const Pack<TP, V>*>(w)[j];
#pragma unroll
        for (int k = 0; k < V; ++k) add(j * V + k, pp.v[k], tt.v[k], load_as<A>(ww.v[k]));
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) add(j * V + k, pp.v[k], tt.v[k], A(1));
      }
    }
    done = packs * V;
  }
  for (int64_t i = done + threadIdx.x; i < tile.count; i += kThreads)
    add(i, pred[i], tru[i], w ? load_as<A>(w[i]) : A(1));
  record_first(bad, bad_element);
  write_partial(s, partials + int64_t(blockIdx.x) * 3);
}

// A warp's sums in lane 0, added in a fixed order (a shuffle tree).
template <typename A>
__device__ __forceinline__ Sum3<A> warp_sum(Sum3<A> s) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    s.i += __shfl_down_sync(0xffffffffu, s.i, offset);
    s.p += __shfl_down_sync(0xffffffffu, s.p, offset);
    s.t += __shfl_down_sync(0xffffffffu, s.t, offset);
  }
  return s;
}

// Several channels, a softmax or sparse labels: each thread holds a few
// pixels (their label and softmax normalizer in registers) and the block walks
// the channels. Each warp adds its pixels' terms of a channel with shuffles
// into shared memory, with no barrier between channels; after every
// kChannelChunk channels the block adds the warps' sums, warp by warp in order,
// so the partials are the same on every run. bad_pixel gets the lowest flat
// pixel index of an out-of-range label, bad_element that of a target or
// probability outside [0, 1] (range_problem, with check_range) of a pixel
// that counts.
constexpr int kWarps = kThreads / 32;
constexpr int kChannelChunk = 64;

template <typename TP, typename TT>
__global__ void __launch_bounds__(kThreads) stats_pixels(Inputs<TP, TT> in, double* partials,
                                                         unsigned long long* bad_pixel,
                                                         unsigned long long* bad_element) {
  using A = typename AccOf<TP>::type;
  __shared__ A warp_sums[kWarps][kChannelChunk][3];
  const Tile tile = block_tile(in.pixels, in.tiles_per_image, kTilePixels);
  PixelState<A> px[kPixelsPerThread];
  bool live[kPixelsPerThread];
  unsigned long long bad = kNoBadLabel;  // the thread's lowest out-of-range pixel
#pragma unroll
  for (int k = 0; k < kPixelsPerThread; ++k) {
    px[k] = load_pixel<A>(in, tile, k);
    if (px[k].in_tile && px[k].label.kind == PixelKind::kOutOfRange) {
      bad = min(bad, static_cast<unsigned long long>(px[k].pixel));
    }
    live[k] = px[k].in_tile && pixel_counts(px[k].label);
  }
  record_first(bad, bad_pixel);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t C = in.rule.channels;
  unsigned long long bad_value = kNoBadLabel;  // the thread's lowest bad element
  for (int64_t c0 = 0; c0 < C; c0 += kChannelChunk) {
    const int n = static_cast<int>(C - c0 < kChannelChunk ? C - c0 : kChannelChunk);
    for (int j = 0; j < n; ++j) {
      const int64_t c = c0 + j;
      Sum3<A> s{A(0), A(0), A(0)};
#pragma unroll
      for (int k = 0; k < kPixelsPerThread; ++k) {
        if (!live[k]) continue;
        // Without from_logits the probability is the prediction as stored.
        const A p = state_probability(in, px[k], c);
        const A t = state_target(in, px[k], c);
        if (in.rule.check_range && range_problem(in.rule.from_logits, t, p) != InputProblem::kNone)
          bad_value = min(bad_value, static_cast<unsigned long long>(px[k].pixel * C + c));
        accumulate_overlap(p, t, state_weight(in, px[k], c), s.i, s.p, s.t);
      }
      s = warp_sum(s);
      if (lane == 0) {
        warp_sums[warp][j][0] = s.i;
        warp_sums[warp][j][1] = s.p;
        warp_sums[warp][j][2] = s.t;
      }
    }
    __syncthreads();
    for (int q = threadIdx.x; q < n * 3; q += kThreads) {
      const int j = q / 3, part = q % 3;
      double total = 0.0;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) total += static_cast<double>(warp_sums[w][j][part]);
      partials[(int64_t(blockIdx.x) * C + c0 + j) * 3 + part] = total;
    }
    __syncthreads();  // warp_sums is written again for the next chunk
  }
  record_first(bad_value, bad_element);
}

// The partials of one group's items (tiles, or segments of a previous level)
// summed by one thread: items first, first + kThreads, ... below end, in order.
__device__ __forceinline__ Sum3<double> sum_items(const double* src, int64_t items, int64_t channels,
                                                  int64_t image, int64_t c, int64_t first, int64_t end) {
  Sum3<double> s{0.0, 0.0, 0.0};
  for (int64_t k = first + threadIdx.x; k < end; k += kThreads) {
    const double* q = src + ((image * items + k) * channels + c) * 3;
    s.i += q[0];
    s.p += q[1];
    s.t += q[2];
  }
  return s;
}

// One level of the reduction tree: block (group, segment) adds the group's
// items [segment * kReduceSpan, (segment + 1) * kReduceSpan) and writes one
// partial, laid out like its input with `segments` items per image.
__global__ void __launch_bounds__(kThreads)
    reduce_level(const double* src, int64_t items, int64_t segments, int64_t channels, double* dst) {
  const int64_t block = blockIdx.x;
  const int64_t group = block / segments;
  const int64_t segment = block - group * segments;
  const int64_t image = group / channels;
  const int64_t c = group - image * channels;
  const int64_t first = segment * kReduceSpan;
  const int64_t end = min(items, first + kReduceSpan);
  const Sum3<double> s = sum_items(src, items, channels, image, c, first, end);
  using Reduce = cub::BlockReduce<Sum3<double>, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const Sum3<double> total = Reduce(temp).Reduce(s, Sum3Add());
  if (threadIdx.x != 0) return;
  double* q = dst + ((image * segments + segment) * channels + c) * 3;
  q[0] = total.i;
  q[1] = total.p;
  q[2] = total.t;
}

// The last level: adds each group's remaining items (at most kReduceSpan) in a
// fixed order, in double, and writes the sums; NaN everywhere when the range
// guards refused a value, which group 0 then completes in the record (the
// label, or what the bad element is and its value).
template <typename A, typename TP, typename TT>
__global__ void __launch_bounds__(kThreads)
    reduce_tiles(const double* partials, int64_t items, int64_t channels, CudaInputRecord* record,
                 Inputs<TP, TT> in, A* out_i, A* out_p, A* out_t) {
  const int64_t group = blockIdx.x;
  const int64_t image = group / channels;
  const int64_t c = group - image * channels;
  const Sum3<double> s = sum_items(partials, items, channels, image, c, 0, items);
  using Reduce = cub::BlockReduce<Sum3<double>, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const Sum3<double> total = Reduce(temp).Reduce(s, Sum3Add());
  if (threadIdx.x != 0) return;
  const int64_t bad_pixel = in.rule.sparse ? record->flat_pixel : -1;
  const int64_t bad_element = record->flat_element;
  if (bad_pixel >= 0 || bad_element >= 0) {
    const A nan = A(NAN);
    out_i[group] = nan;
    out_p[group] = nan;
    out_t[group] = nan;
    if (group != 0) return;
    if (bad_pixel >= 0) record->label = load_label(in.tru[bad_pixel]);
    if (bad_element >= 0) {
      // Compared as the stats kernels compare them; the value as stored.
      const A t = in.rule.sparse ? A(0) : load_as<A>(in.tru[bad_element]);
      const InputProblem problem = range_problem(in.rule.from_logits, t, load_as<A>(in.pred[bad_element]));
      record->problem = static_cast<int64_t>(problem);
      record->value = problem == InputProblem::kTarget ? load_as<double>(in.tru[bad_element])
                                                       : load_as<double>(in.pred[bad_element]);
    }
    return;
  }
  out_i[group] = static_cast<A>(total.i);
  out_p[group] = static_cast<A>(total.p);
  out_t[group] = static_cast<A>(total.t);
}

template <typename TP, typename TT>
struct StatsCuda {
  static void run(const StatsArgs& a, cudaStream_t stream, std::string* error) {
    using A = typename AccOf<TP>::type;
    const Layout l = make_layout(a);
    const Inputs<TP, TT> in = make_inputs<TP, TT>(a, l);
    auto* record = reinterpret_cast<CudaInputRecord*>(a.workspace + kCudaRecordOffset);
    auto* bad_pixel = reinterpret_cast<unsigned long long*>(&record->flat_pixel);
    auto* bad_element = reinterpret_cast<unsigned long long*>(&record->flat_element);
    double* partials = a.workspace + kCudaRecordOffset + kCudaRecordDoubles;
    *error = check_grid(l.tiles());
    if (error->empty()) *error = check_grid(l.groups());
    if (!error->empty()) return;
    // All ones: no bad pixel or element (-1, kNoBadLabel as unsigned).
    const cudaError_t memset = cudaMemsetAsync(record, 0xff, sizeof(CudaInputRecord), stream);
    if (memset != cudaSuccess) {
      *error = std::string("fastiou stats workspace: ") + cudaGetErrorString(memset);
      return;
    }
    const unsigned tiles = static_cast<unsigned>(l.tiles());
    if (tiles > 0) {
      if (l.single) {
        dispatch_bool(a.from_logits, [&](auto logits) {
          stats_single<decltype(logits)::value, TP, TT><<<tiles, kThreads, 0, stream>>>(in, partials, bad_element);
        });
      } else {
        stats_pixels<TP, TT><<<tiles, kThreads, 0, stream>>>(in, partials, bad_pixel, bad_element);
      }
      *error = launch_status("fastiou stats kernel");
      if (!error->empty()) return;
    }
    if (l.groups() == 0) return;
    // A tree over the tiles with a fan-in of kReduceSpan per level: no block
    // adds more than kReduceSpan partials, and the tree depends on the shape
    // alone, so the sums stay bitwise reproducible.
    const double* src = partials;
    double* scratch = partials + l.tiles() * l.channels * 3;
    int64_t items = l.tiles_per_image;
    while (items > kReduceSpan) {
      const int64_t segments = (items + kReduceSpan - 1) / kReduceSpan;
      *error = check_grid(l.groups() * segments);
      if (!error->empty()) return;
      reduce_level<<<static_cast<unsigned>(l.groups() * segments), kThreads, 0, stream>>>(src, items, segments,
                                                                                           l.channels, scratch);
      *error = launch_status("fastiou stats reduction");
      if (!error->empty()) return;
      src = scratch;
      scratch += l.groups() * segments * 3;
      items = segments;
    }
    reduce_tiles<A, TP, TT><<<static_cast<unsigned>(l.groups()), kThreads, 0, stream>>>(
        src, items, l.channels, record, in, static_cast<A*>(a.intersection), static_cast<A*>(a.pred_sum),
        static_cast<A*>(a.true_sum));
    *error = launch_status("fastiou stats reduction");
  }
};

}  // namespace
}  // namespace cuda_detail

using namespace cuda_detail;

int64_t stats_workspace_doubles_cuda(const OverlapInputs& inputs) {
  const Layout l = make_layout(inputs);
  int64_t doubles = l.tiles() * l.channels * 3;  // the tile partials
  for (int64_t items = l.tiles_per_image; items > kReduceSpan;) {
    items = (items + kReduceSpan - 1) / kReduceSpan;
    doubles += l.groups() * items * 3;  // one level of the reduction tree
  }
  return kCudaRecordOffset + kCudaRecordDoubles + doubles;
}

std::string overlap_stats_cuda(const StatsArgs& args, void* stream) {
  if (std::string problem = launch_problem(args); !problem.empty()) return problem;
  // bool targets are read as uint8: half the instantiations, the same values.
  return run_for_dtypes<StatsCuda, true>(args, static_cast<cudaStream_t>(stream));
}

}  // namespace fastiou
