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

// One channel, element targets: a flat stream of (p, t, w), 16-byte loads
// where the tile's data is aligned.
template <bool kLogits, typename TP, typename TT>
__global__ void __launch_bounds__(kThreads) stats_single(Inputs<TP, TT> in, double* partials) {
  using A = typename AccOf<TP>::type;
  constexpr int V = VectorWidth<TP>::value;
  const Tile tile = block_tile(in.pixels, in.tiles_per_image, kTileElements);
  const TP* pred = in.pred + tile.first;
  const TT* tru = in.tru + tile.first;
  const TP* w = in.w ? in.w + tile.first : nullptr;
  Sum3<A> s{A(0), A(0), A(0)};
  auto add = [&](TP x, TT t, A wv) {
    accumulate_overlap(probability<kLogits>(load_as<A>(x)), load_as<A>(t), wv, s.i, s.p, s.t);
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
        for (int k = 0; k < V; ++k) add(pp.v[k], tt.v[k], load_as<A>(ww.v[k]));
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) add(pp.v[k], tt.v[k], A(1));
      }
    }
    done = packs * V;
  }
  for (int64_t i = done + threadIdx.x; i < tile.count; i += kThreads)
    add(pred[i], tru[i], w ? load_as<A>(w[i]) : A(1));
  write_partial(s, partials + int64_t(blockIdx.x) * 3);
}

// Several channels, a softmax or sparse labels: each thread holds a few
// pixels (their label and softmax normalizer in registers) and the block walks
// the channels, one block reduction per channel.
template <typename TP, typename TT>
__global__ void __launch_bounds__(kThreads)
    stats_pixels(Inputs<TP, TT> in, double* partials, unsigned long long* bad_pixel) {
  using A = typename AccOf<TP>::type;
  const Tile tile = block_tile(in.pixels, in.tiles_per_image, kTilePixels);
  PixelState<A> px[kPixelsPerThread];
#pragma unroll
  for (int k = 0; k < kPixelsPerThread; ++k) {
    px[k] = load_pixel<A>(in, tile, k);
    if (px[k].live && px[k].label == kLabelOutOfRange) {
      atomicMin(bad_pixel, static_cast<unsigned long long>(px[k].pixel));
      px[k].live = false;
    }
    if (px[k].label == kLabelIgnored) px[k].live = false;
  }
  for (int64_t c = 0; c < in.channels; ++c) {
    Sum3<A> s{A(0), A(0), A(0)};
#pragma unroll
    for (int k = 0; k < kPixelsPerThread; ++k) {
      if (!px[k].live) continue;
      accumulate_overlap(pixel_probability(in, px[k], c), pixel_target(in, px[k], c),
                         pixel_weight(in, px[k], c), s.i, s.p, s.t);
    }
    write_partial(s, partials + (int64_t(blockIdx.x) * in.channels + c) * 3);
  }
}

// Adds the partials of each group's tiles in a fixed order, in double, and
// writes the sums; NaN everywhere when a sparse label was out of range.
template <typename A, typename TT>
__global__ void __launch_bounds__(kThreads)
    reduce_tiles(const double* partials, int64_t tiles_per_image, int64_t channels,
                 const unsigned long long* bad_pixel, int64_t* bad_value, const TT* labels,
                 bool sparse, A* out_i, A* out_p, A* out_t) {
  const int64_t group = blockIdx.x;
  const int64_t image = group / channels;
  const int64_t c = group - image * channels;
  Sum3<double> s{0.0, 0.0, 0.0};
  for (int64_t k = threadIdx.x; k < tiles_per_image; k += kThreads) {
    const double* q = partials + ((image * tiles_per_image + k) * channels + c) * 3;
    s.i += q[0];
    s.p += q[1];
    s.t += q[2];
  }
  using Reduce = cub::BlockReduce<Sum3<double>, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const Sum3<double> total = Reduce(temp).Reduce(s, Sum3Add());
  if (threadIdx.x != 0) return;
  const unsigned long long bad = sparse ? *bad_pixel : kNoBadLabel;
  if (bad != kNoBadLabel) {
    const A nan = A(NAN);
    out_i[group] = nan;
    out_p[group] = nan;
    out_t[group] = nan;
    if (group == 0) *bad_value = load_label(labels[bad]);
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
    auto* bad_pixel = reinterpret_cast<unsigned long long*>(a.workspace + kCudaLabelRecordOffset);
    auto* bad_value = reinterpret_cast<int64_t*>(a.workspace + kCudaLabelRecordOffset + 1);
    double* partials = a.workspace + kCudaLabelRecordOffset + 2;
    *error = check_grid(l.tiles()) + check_grid(l.groups());
    if (!error->empty()) return;
    if (cudaMemsetAsync(bad_pixel, 0xff, 2 * sizeof(int64_t), stream) != cudaSuccess) {
      *error = launch_status("fastiou stats workspace");
      return;
    }
    const unsigned tiles = static_cast<unsigned>(l.tiles());
    if (tiles > 0) {
      if (l.single) {
        dispatch_bool(a.from_logits, [&](auto logits) {
          stats_single<decltype(logits)::value, TP, TT><<<tiles, kThreads, 0, stream>>>(in, partials);
        });
      } else {
        stats_pixels<TP, TT><<<tiles, kThreads, 0, stream>>>(in, partials, bad_pixel);
      }
      *error = launch_status("fastiou stats kernel");
      if (!error->empty()) return;
    }
    if (l.groups() > 0) {
      reduce_tiles<A, TT><<<static_cast<unsigned>(l.groups()), kThreads, 0, stream>>>(
          partials, l.tiles_per_image, l.channels, bad_pixel, bad_value, in.tru, a.labels.sparse,
          static_cast<A*>(a.intersection), static_cast<A*>(a.pred_sum), static_cast<A*>(a.true_sum));
      *error = launch_status("fastiou stats reduction");
    }
  }
};

}  // namespace
}  // namespace cuda_detail

using namespace cuda_detail;

int64_t stats_workspace_doubles_cuda(const OverlapInputs& inputs) {
  const Layout l = make_layout(inputs);
  return kCudaLabelRecordOffset + 2 + l.tiles() * l.channels * 3;
}

std::string overlap_stats_cuda(const StatsArgs& args, void* stream) {
  // bool targets are read as uint8: half the instantiations, the same values.
  return run_for_dtypes<StatsCuda, true>(args, static_cast<cudaStream_t>(stream));
}

}  // namespace fastiou
