// CUDA kernels of the overlap gradient: one pass that writes dL/dy_pred (or
// dL/dy_true) from the per-group gradients.
#include "cuda/overlap_cuda.cuh"

namespace fastiou {
namespace cuda_detail {
namespace {

template <typename A>
struct GroupGrads {
  const A* gi;
  const A* gp;
  const A* gt;
};

// dL/dy_pred (or dL/dy_true) of one element of the single-channel path.
template <bool kLogits, typename A, typename TP, typename TT>
__device__ __forceinline__ TP single_grad(bool wrt_true, bool needs_pred, TP x, TT t, A wv, A g_i,
                                          A g_p, A g_t) {
  const A p = needs_pred ? probability<kLogits>(load_as<A>(x)) : A(0);
  if (wrt_true) return store_as<TP>(true_gradient(p, wv, g_i, g_t));
  return store_as<TP>(pred_gradient<kLogits>(p, load_as<A>(t), wv, g_i, g_p));
}

template <bool kLogits, typename TP, typename TT>
__global__ void __launch_bounds__(kThreads)
    grad_single(Inputs<TP, TT> in, GroupGrads<typename AccOf<TP>::type> g, bool wrt_true, TP* out) {
  using A = typename AccOf<TP>::type;
  constexpr int V = VectorWidth<TP>::value;
  const Tile tile = block_tile(in.pixels, in.tiles_per_image, kTileElements);
  const TP* pred = in.pred + tile.first;
  const TT* tru = in.tru + tile.first;
  const TP* w = in.w ? in.w + tile.first : nullptr;
  TP* o = out + tile.first;
  const A g_i = g.gi[tile.image], g_p = g.gp[tile.image], g_t = g.gt[tile.image];
  // Probabilities need the prediction only for the sigmoid's Jacobian or for
  // the gradient with respect to the target.
  const bool needs_pred = kLogits || wrt_true;
  int64_t done = 0;
  if (pack_aligned<TP, V>(pred) && pack_aligned<TT, V>(tru) && pack_aligned<TP, V>(w) &&
      pack_aligned<TP, V>(o)) {
    const int64_t packs = tile.count / V;
#pragma unroll 2
    for (int64_t j = threadIdx.x; j < packs; j += kThreads) {
      Pack<TP, V> pp{};
      if (needs_pred) pp = reinterpret_cast<const Pack<TP, V>*>(pred)[j];
      const Pack<TT, V> tt = reinterpret_cast<const Pack<TT, V>*>(tru)[j];
      Pack<TP, V> ww{};
      if (w) ww = reinterpret_cast<const Pack<TP, V>*>(w)[j];
      Pack<TP, V> r;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A wv = w ? load_as<A>(ww.v[k]) : A(1);
        r.v[k] = single_grad<kLogits>(wrt_true, needs_pred, pp.v[k], tt.v[k], wv, g_i, g_p, g_t);
      }
      reinterpret_cast<Pack<TP, V>*>(o)[j] = r;
    }
    done = packs * V;
  }
  for (int64_t i = done + threadIdx.x; i < tile.count; i += kThreads) {
    const A wv = w ? load_as<A>(w[i]) : A(1);
    o[i] = single_grad<kLogits>(wrt_true, needs_pred, pred[i], tru[i], wv, g_i, g_p, g_t);
  }
}

// Per-pixel gradient: thread per pixel, channels walked in registers and L1
// by the shared pixel_gradient (with a softmax: one walk for the Jacobian's dot
// product, one to write).
template <typename TP, typename TT>
__global__ void __launch_bounds__(kThreads)
    grad_pixels(Inputs<TP, TT> in, GroupGrads<typename AccOf<TP>::type> g, bool wrt_true, TP* out) {
  using A = typename AccOf<TP>::type;
  const int64_t C = in.rule.channels;
  const Tile tile = block_tile(in.pixels, in.tiles_per_image, kTilePixels);
  const int64_t row = tile.image * C;
  const A* gi = g.gi + row;
  const A* gp = g.gp + row;
  const A* gt = g.gt + row;
  // Nothing is carried from one pixel to the next: no unrolling needed.
#pragma unroll 1
  for (int k = 0; k < kPixelsPerThread; ++k) {
    const PixelState<A> s = load_pixel<A>(in, tile, k);
    if (!s.in_tile) continue;
    TP* o = out + s.pixel * C;
    dispatch_grad_kind(grad_kind(in.rule, wrt_true), [&](auto kind) {
      pixel_gradient<decltype(kind)::value>(
          in.rule, s.label, pixel_targets(in.rule, in.tru, s.pixel),
          [&](int64_t c) { return state_probability(in, s, c); }, [&](int64_t c) { return state_weight(in, s, c); },
          gi, gp, gt, [&](int64_t c, A v) { o[c] = store_as<TP>(v); });
    });
  }
}

template <typename TP, typename TT>
struct GradCuda {
  static void run(const GradArgs& a, cudaStream_t stream, std::string* error) {
    using A = typename AccOf<TP>::type;
    const Layout l = make_layout(a);
    const Inputs<TP, TT> in = make_inputs<TP, TT>(a, l);
    const GroupGrads<A> g{static_cast<const A*>(a.grad_intersection), static_cast<const A*>(a.grad_pred_sum),
                          static_cast<const A*>(a.grad_true_sum)};
    TP* out = static_cast<TP*>(a.output);
    *error = check_grid(l.tiles());
    if (!error->empty() || l.tiles() == 0) return;
    const unsigned tiles = static_cast<unsigned>(l.tiles());
    if (l.single) {
      dispatch_bool(a.from_logits, [&](auto logits) {
        grad_single<decltype(logits)::value, TP, TT><<<tiles, kThreads, 0, stream>>>(in, g, a.wrt_true, out);
      });
    } else {
      grad_pixels<TP, TT><<<tiles, kThreads, 0, stream>>>(in, g, a.wrt_true, out);
    }
    *error = launch_status("fastiou gradient kernel");
  }
};

}  // namespace
}  // namespace cuda_detail

using namespace cuda_detail;

std::string overlap_grad_cuda(const GradArgs& args, void* stream) {
  if (std::string problem = launch_problem(args); !problem.empty()) return problem;
  // bool targets are read as uint8: half the instantiations, the same values.
  return run_for_dtypes<GradCuda, true>(args, static_cast<cudaStream_t>(stream));
}

}  // namespace fastiou
