// The C++ kernels' tile path: sparse labels, pixels across the vector lanes.
//
// With one class index per pixel and unit or per-pixel weights, every input
// of a channel but the prediction is one value per pixel. The tile path then
// walks kLanes pixels at a time, one pixel per vector lane: the prediction
// tile is read transposed (channel c of the kLanes pixels side by side), and
// every channel loop, the softmax's maximum and sum included, is plain vector
// arithmetic with no horizontal step and no per-pixel loop overhead. Sums are
// kept per lane and added across the lanes, in a fixed order, at the end of a
// chunk, so results depend on the build's vector width only. With AVX2 and
// AVX-512, float tiles are transposed in registers, kLanes channels at a time
// (load_tile, store_tile); elsewhere one value at a time.
//
// From probabilities without weights no transposition is needed: a tile's
// kLanes * C values, as stored, are C whole vectors whose element e always
// belongs to channel e % C. The stats add such tiles up per element (when
// every pixel of the tile counts; other tiles take the lane path), and the
// gradient, which then needs no prediction, writes whole tiles of two values
// per channel (periodic_tile, periodic_grad_chunk).
//
// Per-pixel decisions (read_pixel_label, pixel_counts, pixel_has_gradient)
// and per-element formulas (accumulate_overlap, channel_gradient,
// softmax_dot_term, exp_) are the shared ones of core/pixel_math.h and
// core/overlap_math.h; only the loop order is the tile's own.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

// GCC 12's AVX-512 header trips its own -Wmaybe-uninitialized once inlined
// (_mm512_undefined_ps, fixed in GCC 13): silenced for the header's lines.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include "core/overlap_math.h"
#include "core/pixel_math.h"
#include "core/simd_level.h"

#define FASTIOU_SIMD _Pragma("omp simd")

namespace fastiou {
FASTIOU_LEVEL_BEGIN
namespace cpu {

// Floats in one vector register of the build's target.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif

// Whether a launch takes the tile path.
inline bool tile_path(const PixelRule& r, bool weights) {
  return r.sparse && (!weights || r.weights_per_pixel);
}

// Whether targets of type TT can be sparse labels, so reach the tile path:
// labels are integers (float label dtypes are refused before any kernel runs),
// and kernels compile the path for those alone.
template <typename TT>
constexpr bool kLabelType = std::is_integral_v<TT>;

// Scratch of one thread, reused by every chunk the thread runs: no
// allocation per chunk. kSlot tells apart buffers used at the same time.
// The buffer is plain malloc'ed memory of trivially copyable values: no
// standard container, whose member functions would be shared with the other
// SIMD levels' copies of the kernels (core/simd_level.h).
template <typename T>
struct ScratchBuffer {
  T* data = nullptr;
  int64_t size = 0;
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { std::free(data); }
};

template <typename T, int kSlot = 0>
T* thread_scratch(int64_t values) {
  thread_local ScratchBuffer<T> buffer;
  if (buffer.size < values) {
    std::free(buffer.data);
    buffer.data = static_cast<T*>(std::malloc(static_cast<size_t>(values) * sizeof(T)));
    if (buffer.data == nullptr) throw std::bad_alloc();
    buffer.size = values;
  }
  return buffer.data;
}

// Streaming stores for large outputs. A mask-sized gradient is written once
// and read by the next op long after, so caching it buys nothing; a plain
// store also reads each cache line before writing it (read for ownership),
// a third stream of memory traffic beside the inputs' read and the output's
// write. Streaming (non-temporal) stores write whole lines without reading
// them. Outputs of at least kStreamBytes take them; smaller ones stay in the
// caches, where the next op finds them.
constexpr int64_t kStreamBytes = int64_t(16) << 20;
#if defined(__AVX512F__)
constexpr int kStreamVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kStreamVectorBytes = 32;
#else
constexpr int kStreamVectorBytes = 16;
#endif

// Software prefetch for the loops that stream through mask-sized inputs.
// The hardware prefetcher keeps a pure read at memory speed, but a loop that
// also computes (a sigmoid per element) asks for lines late, and the read and
// the arithmetic then take turns instead of overlapping. Lines asked for
// kPrefetchBytes ahead arrive while the core computes: on a 2-core Xeon, a
// sigmoid pass over 8x128x128x128 logits and targets went from 7.0 to 5.2 ms
// (a standalone loop; distances of 1 to 4 KiB did about as well).
constexpr int64_t kPrefetchBytes = 2048;

// Asks for the cache line at `line` (prefetcht0). A hint: an address past
// the end of an input faults nothing. Written as an instruction, not
// __builtin_prefetch: GCC 12 deleted the builtin's loops where a lambda made
// two of them in a row (the single-channel gradient from logits had no
// prefetch at all), since the builtin counts as having no effect.
inline void prefetch_line(const char* line) { asm volatile("prefetcht0 %0" : : "m"(*line)); }

// Asks for the lines of the `bytes` bytes from `first` (at least one line).
inline void prefetch_lines(const char* first, int64_t bytes) {
  for (int64_t b = 0; b < std::max<int64_t>(1, bytes); b += 64) prefetch_line(first + b);
}

// Asks for the lines of values [at, at + values) kPrefetchBytes ahead.
template <typename T>
inline void prefetch_ahead(const T* at, int64_t values) {
  prefetch_lines(reinterpret_cast<const char*>(at) + kPrefetchBytes, values * int64_t(sizeof(T)));
}

// store_values' block: four vectors, in values of type TP.
template <typename TP>
constexpr int64_t kStreamBlock = 4 * kStreamVectorBytes / int64_t(sizeof(TP));

// The values store_values writes at out by plain stores before its first
// aligned vector, where its streamed blocks begin; -1 where it streams
// nothing (out not at a multiple of the value's size).
template <typename TP>
int64_t stream_head(const TP* out) {
  const uintptr_t misaligned = reinterpret_cast<uintptr_t>(out) % kStreamVectorBytes;
  if (misaligned % sizeof(TP) != 0) return -1;
  return misaligned == 0 ? 0 : int64_t(kStreamVectorBytes - misaligned) / int64_t(sizeof(TP));
}

// Writes out[i] = value(i) for i in [0, n), a block of kBlock values at a
// time (four vectors); prefetch(i, kBlock) is called before the block of
// values [i, i + kBlock) (prefetch_ahead of their inputs). With `stream`,
// each block is computed in a vector loop into a local buffer and each
// aligned block leaves by streaming stores; the unaligned head and the tail
// take plain stores. Either way every out[i] gets the same value(i), so the
// bits do not depend on `stream`. Streamed writes are weakly ordered: a chunk
// that streamed ends with stream_fence.
template <typename TP, typename F, typename P>
void store_values(TP* out, int64_t n, bool stream, const F& value, const P& prefetch) {
  constexpr int64_t kBlock = kStreamBlock<TP>;
  static_assert(4 * kStreamVectorBytes % sizeof(TP) == 0, "a block is whole values");
  int64_t i = 0;
  if (stream) {
    // Plain stores up to the first aligned block (all of them when out cannot
    // reach an alignment of whole values).
    int64_t head = stream_head(out);
    head = head < 0 ? n : std::min(head, n);
    for (; i < head; ++i) out[i] = value(i);
    alignas(64) TP block[kBlock];
    for (; i + kBlock <= n; i += kBlock) {
      prefetch(i, kBlock);
      FASTIOU_SIMD
      for (int64_t j = 0; j < kBlock; ++j) block[j] = value(i + j);
      for (int64_t b = 0; b < kBlock * int64_t(sizeof(TP)); b += kStreamVectorBytes) {
        char* to = reinterpret_cast<char*>(out + i) + b;
        const char* from = reinterpret_cast<const char*>(block) + b;
#if defined(__AVX512F__)
        _mm512_stream_si512(reinterpret_cast<__m512i*>(to), _mm512_load_si512(from));
#elif defined(__AVX__)
        _mm256_stream_si256(reinterpret_cast<__m256i*>(to), _mm256_load_si256(reinterpret_cast<const __m256i*>(from)));
#else
        _mm_stream_si128(reinterpret_cast<__m128i*>(to), _mm_load_si128(reinterpret_cast<const __m128i*>(from)));
#endif
      }
    }
  } else {
    for (; i + kBlock <= n; i += kBlock) {
      prefetch(i, kBlock);
      FASTIOU_SIMD
      for (int64_t j = 0; j < kBlock; ++j) out[i + j] = value(i + j);
    }
  }
  FASTIOU_SIMD
  for (int64_t k = i; k < n; ++k) out[k] = value(k);
}

// store_values of values already in the caches: nothing to prefetch.
template <typename TP, typename F>
void store_values(TP* out, int64_t n, bool stream, const F& value) {
  store_values(out, n, stream, value, [](int64_t, int64_t) {});
}

// Orders a chunk's streamed writes before whatever the thread writes next
// (the thread pool's completion signal included).
inline void stream_fence(bool stream) {
  if (stream) _mm_sfence();
}

// Sends a chunk's staged values out by store_values as its tiles are made,
// so that the streamed lines leave while the next tiles are computed rather
// than all after the chunk: `ready` values are made, [*sent, ready) wait.
// Before the last call, only up to the end of the last whole block that one
// store_values of the whole chunk would stream (kStreamBlock values from
// stream_head), so that every call between the first and the last starts and
// ends on that grid; `last` sends the rest. Each value is sent once, as
// staged, and the same lines stream as in one store_values of the whole
// chunk: the same bits, the same stores.
template <typename TP>
void stream_ready(TP* out, const TP* staged, int64_t ready, bool last, int64_t* sent) {
  int64_t end = ready;
  if (!last) {
    const int64_t head = stream_head(out);
    if (head < 0 || ready - head < kStreamBlock<TP>) return;  // nothing streamed yet: later
    end = head + (ready - head) / kStreamBlock<TP> * kStreamBlock<TP>;
  }
  if (end <= *sent) return;
  const TP* from = staged + *sent;
  store_values(out + *sent, end - *sent, true, [from](int64_t e) { return from[e]; });
  *sent = end;
}

// The range guards' register (BadInput): the largest bit pattern of the
// values a loop has read, as an unsigned integer of their width, kept as a
// max reduction from 0. Every float in [0, 1] (+0.0 included) has a pattern
// no larger than 1.0's; a negative one (sign bit set), one above 1, an
// infinity or a NaN has a larger one: one integer max per value read, no
// branch. -0.0 and NaN raise the alarm without being out of range; the walk
// that follows an alarm (first_bad_value) then finds nothing, and nothing is
// reported.
template <typename A>
inline void widen_range(A v, FloatBits<A>& seen) {
  const FloatBits<A> b = bits_of(v);
  seen = b > seen ? b : seen;
}
template <typename A>
inline bool range_alarm(FloatBits<A> seen) {
  return seen > bits_of(A(1));
}

// The first input value of a chunk that the range guards refuse (BadInput):
// a sparse label while the chunk is read, a target or probability outside
// [0, 1] from first_bad_value once the chunk's pass has seen one.
struct ChunkBad {
  InputProblem problem = InputProblem::kNone;
  int64_t pixel = -1;  // within its image
  int64_t channel = 0;
  int64_t label = 0;
  double value = 0;
  bool found() const { return problem != InputProblem::kNone; }
  BadInput input() const { return BadInput{problem, pixel, channel, label, value}; }
  // Takes an out-of-range sparse label at `at` (a pixel within its image)
  // unless the chunk already has its first problem.
  void note_label(const PixelLabel& l, int64_t at) {
    if (l.kind != PixelKind::kOutOfRange || found()) return;
    problem = InputProblem::kLabel;
    pixel = at;
    label = l.value;
  }
};

// The chunk's first element, in element order over the pixels that count
// (pixel_counts), whose dense target or, with probabilities (not kLogits),
// whose prediction lies outside [0, 1]; none found when there is none. The
// passes find out that there may be one from their register (widen_range,
// range_alarm); this serial walk, run only then, says where.
// chunk_first is the chunk's first pixel in its image.
template <bool kLogits, typename TP, typename TT>
ChunkBad first_bad_value(const PixelRule& rule, const TP* pred, const TT* tru, const TT* labels, int64_t pixels,
                         int64_t chunk_first) {
  using A = typename AccOf<TP>::type;  // compared as the passes compare them
  const int64_t C = rule.channels;
  ChunkBad bad;
  for (int64_t px = 0; px < pixels; ++px) {
    if (!pixel_counts(read_pixel_label(rule, labels, px))) continue;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t e = px * C + c;
      const A t = rule.sparse ? A(0) : load_as<A>(tru[e]);
      const A x = kLogits ? A(0) : load_as<A>(pred[e]);
      const InputProblem problem = range_problem(kLogits, t, x);
      if (problem == InputProblem::kNone) continue;
      bad.problem = problem;
      bad.pixel = chunk_first + px;
      bad.channel = c;
      bad.value = problem == InputProblem::kTarget ? load_as<double>(tru[e]) : load_as<double>(pred[e]);
      return bad;
    }
  }
  return bad;
}

// The per-pixel values of a tile of kLanes pixels. Lanes past the chunk's
// last pixel read the tile's first pixel again and count nowhere.
template <typename A>
struct PixelTile {
  int valid = 0;              // lanes holding a pixel of the chunk
  Channel cls[kLanes];        // the class, -1 for none
  Channel counted[kLanes];    // 1 where the pixel adds to the sums, else 0
  Channel live[kLanes];       // 1 where the pixel has a gradient, else 0
  A weight[kLanes];           // the pixel's weight, 1 without weights
};

// Reads the labels (and per-pixel weights) of pixels [first, first + kLanes)
// of a chunk of `pixels` pixels. bad (stats only) records the chunk's first
// out-of-range label; chunk_first is the chunk's first pixel in its image.
template <bool kWeights, typename TP, typename TT, typename A>
void read_tile(const PixelRule& rule, const TT* labels, const TP* w, int64_t first, int64_t pixels,
               int64_t chunk_first, PixelTile<A>* t, ChunkBad* bad) {
  t->valid = static_cast<int>(std::min<int64_t>(kLanes, pixels - first));
  for (int l = 0; l < kLanes; ++l) {
    const bool in = l < t->valid;
    const int64_t px = in ? first + l : first;
    const PixelLabel label = read_pixel_label(rule, labels, px);
    if (bad != nullptr && in) bad->note_label(label, chunk_first + px);
    t->cls[l] = label.kind == PixelKind::kClass ? static_cast<Channel>(label.value) : Channel(-1);
    t->counted[l] = in && pixel_counts(label);
    t->live[l] = in && pixel_has_gradient(label);
    t->weight[l] = kWeights ? load_as<A>(w[px]) : A(1);
  }
}

// Asks for the tile kPrefetchTiles ahead of the one at x (span values), so
// that its cache lines arrive in time (a hint: reading past the end of the
// input faults nothing).
template <typename TP>
void prefetch_tiles_ahead(const TP* x, int64_t span) {
  constexpr int kPrefetchTiles = 4;
  prefetch_lines(reinterpret_cast<const char*>(x + kPrefetchTiles * span), span * int64_t(sizeof(TP)));
}

// The predictions of a tile: kLanes whole pixels, one after the other. The
// chunk's last tile, when short, is copied to a scratch buffer with its first
// pixel repeated, so that every tile is read with the same fixed stride
// (an indexed read would compile to vector gathers, slow on many CPUs).
template <typename TP, typename A>
const TP* tile_predictions(const PixelRule& rule, const TP* pred, const PixelTile<A>& t) {
  const int64_t C = rule.channels;
  if (t.valid == kLanes) {
    // The transposed read asks for kLanes cache lines at once.
    prefetch_tiles_ahead(pred, kLanes * C);
    return pred;
  }
  TP* stage = thread_scratch<TP, 1>(kLanes * C);
  for (int l = 0; l < kLanes; ++l) {
    const TP* src = pred + (l < t.valid ? l : 0) * C;
    std::copy(src, src + C, stage + l * C);
  }
  return stage;
}

// The size of a buffer for a transposed tile (load_tile, store_tile): C
// channels rounded up to whole blocks of kLanes, so that a block is always
// moved whole (the channels past C are scratch values nobody reads).
inline int64_t transposed_tile_values(Channel C) {
  return int64_t((C + kLanes - 1) / kLanes) * kLanes * kLanes;
}

// Transposes the square block of vectors r in registers: afterwards r[i]
// holds element i of every vector that was in r, in order. Its first stage,
// transpose_quarters, transposes four vectors 4x4 within each 128-bit lane:
// afterwards lane q of r[j] holds element j of lane q of r[0] to r[3].
#if defined(__AVX512F__)
inline void transpose_quarters(__m512 r[4]) {
  const __m512 t0 = _mm512_unpacklo_ps(r[0], r[1]), t1 = _mm512_unpackhi_ps(r[0], r[1]);
  const __m512 t2 = _mm512_unpacklo_ps(r[2], r[3]), t3 = _mm512_unpackhi_ps(r[2], r[3]);
  r[0] = _mm512_shuffle_ps(t0, t2, 0x44);
  r[1] = _mm512_shuffle_ps(t0, t2, 0xEE);
  r[2] = _mm512_shuffle_ps(t1, t3, 0x44);
  r[3] = _mm512_shuffle_ps(t1, t3, 0xEE);
}

inline void transpose_block(__m512 r[16]) {
  for (int i = 0; i < 16; i += 4) transpose_quarters(r + i);
  __m512 t[16];
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
  }
}

// Narrow blocks (AVX-512): a block of 8 channels or fewer is moved with each
// vector holding two pixels, pixel i in its low 256 bits and pixel i + 8 in
// its high ones (transpose_halves, 8 vectors), and one of 4 channels or fewer
// with four pixels, i + 4q in 128-bit lane q (transpose_quarters, 4
// vectors): an 8x8 or 4x4 transpose within each part gives vector j channel j
// of the 16 pixels in order, in 24 or 8 shuffles instead of the 64 of a whole
// block.
inline void transpose_halves(__m512 r[8]) {
  transpose_quarters(r);
  transpose_quarters(r + 4);
  // 128-bit lanes (a0 b0 a2 b2) and (a1 b1 a3 b3) of a = r[i], b = r[i + 4]:
  // within each 256-bit part, the lower and the upper lanes of both.
  const __m512i lower = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
  const __m512i upper = _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
  __m512 t[8];
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_permutex2var_ps(r[i], lower, r[i + 4]);
    t[i + 4] = _mm512_permutex2var_ps(r[i], upper, r[i + 4]);
  }
  for (int i = 0; i < 8; ++i) r[i] = t[i];
}
#elif defined(__AVX2__)
inline void transpose_quarters(__m256 r[4]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  r[0] = _mm256_shuffle_ps(t0, t2, 0x44);
  r[1] = _mm256_shuffle_ps(t0, t2, 0xEE);
  r[2] = _mm256_shuffle_ps(t1, t3, 0x44);
  r[3] = _mm256_shuffle_ps(t1, t3, 0xEE);
}

inline void transpose_block(__m256 r[8]) {
  transpose_quarters(r);
  transpose_quarters(r + 4);
  __m256 t[8];
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
  for (int i = 0; i < 8; ++i) r[i] = t[i];
}
#endif

// Reads a whole tile of predictions x (tile_predictions) transposed:
// p[c * kLanes + l] = x[l * C + c], p holding transposed_tile_values(C).
// Float tiles go kLanes channels at a time through an in-register transpose
// (AVX2, AVX-512; with AVX-512 a last block of 8 or 4 channels or fewer
// through a narrow one, transpose_halves or transpose_quarters), reading each
// pixel's channels as stored, none past the tile; AVX-512 writes channels
// below C only, AVX2 whole blocks (zeros past channel C). The values are
// copied, not computed, so every way reads the same bits.
template <typename TP, typename A>
void load_tile(const TP* x, Channel C, A* p) {
#if defined(__AVX512F__) || defined(__AVX2__)
  if constexpr (std::is_same_v<TP, float> && std::is_same_v<A, float>) {
    for (Channel c0 = 0; c0 < C; c0 += kLanes) {
      const int n = static_cast<int>(std::min<Channel>(kLanes, C - c0));
#if defined(__AVX512F__)
      const __mmask16 keep = static_cast<__mmask16>((1u << n) - 1);
      if (n <= 4) {
        // Pixel i + 4q into 128-bit lane q (transpose_quarters).
        __m512 r[4];
        for (int i = 0; i < 4; ++i) {
          r[i] = _mm512_maskz_loadu_ps(keep, x + int64_t(i) * C + c0);
          for (int q = 1; q < 4; ++q)
            r[i] = _mm512_mask_loadu_ps(r[i], static_cast<__mmask16>(keep << (4 * q)),
                                        x + int64_t(i + 4 * q) * C + c0 - 4 * q);
        }
        transpose_quarters(r);
        for (int j = 0; j < 4; ++j)
          if (j < n) _mm512_storeu_ps(p + int64_t(c0 + j) * kLanes, r[j]);
        continue;
      }
      if (n <= 8) {
        // Pixel i into the low 256 bits, i + 8 into the high ones (transpose_halves).
        __m512 r[8];
        for (int i = 0; i < 8; ++i) {
          r[i] = _mm512_maskz_loadu_ps(keep, x + int64_t(i) * C + c0);
          r[i] = _mm512_mask_loadu_ps(r[i], static_cast<__mmask16>(keep << 8), x + int64_t(i + 8) * C + c0 - 8);
        }
        transpose_halves(r);
        for (int j = 0; j < 8; ++j)
          if (j < n) _mm512_storeu_ps(p + int64_t(c0 + j) * kLanes, r[j]);
        continue;
      }
      __m512 r[kLanes];
      for (int l = 0; l < kLanes; ++l) r[l] = _mm512_maskz_loadu_ps(keep, x + int64_t(l) * C + c0);
      transpose_block(r);
      for (int j = 0; j < kLanes; ++j)
        if (j < n) _mm512_storeu_ps(p + int64_t(c0 + j) * kLanes, r[j]);
#else
      const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      __m256 r[kLanes];
      for (int l = 0; l < kLanes; ++l) r[l] = _mm256_maskload_ps(x + int64_t(l) * C + c0, keep);
      transpose_block(r);
      for (int j = 0; j < kLanes; ++j) _mm256_storeu_ps(p + int64_t(c0 + j) * kLanes, r[j]);
#endif
    }
    return;
  }
#endif
  for (Channel c = 0; c < C; ++c) {
    A* pc = p + c * kLanes;
    FASTIOU_SIMD
    for (int l = 0; l < kLanes; ++l) pc[l] = load_as<A>(x[l * C + c]);
  }
}

// The tile's probabilities, transposed, as p[c * kLanes + l] * scale[l] for
// channel c of lane l, from the tile's predictions x (tile_predictions): as
// stored, the sigmoid of each logit (scale 1), or the softmax, per lane, from
// the steps of core/overlap_math.h (softmax_max, softmax_exp,
// softmax_inverse; p then holds each channel's exponential and scale the
// inverse of their sum, which the callers apply with softmax_scale as they
// read p, instead of a pass of their own; probabilities as stored are read
// without it). The maximum is taken in two chains, even and odd channels,
// that meet at the end: the same maximum, as a maximum does not depend on
// its order (a NaN logit makes every probability of its pixel NaN either
// way).
template <bool kLogits, typename TP, typename A>
void tile_probabilities(const PixelRule& rule, const TP* x, A* p, A* scale) {
  const Channel C = static_cast<Channel>(rule.channels);
  load_tile(x, C, p);
  FASTIOU_SIMD
  for (int l = 0; l < kLanes; ++l) scale[l] = A(1);
  if constexpr (kLogits) {
    if (rule.softmax) {
      A m[kLanes], m_odd[kLanes], sum[kLanes];
      FASTIOU_SIMD
      for (int l = 0; l < kLanes; ++l) {
        m[l] = p[l];
        m_odd[l] = p[l];
        sum[l] = 0;
      }
      Channel c = 1;
      for (; c + 2 <= C; c += 2) {
        const A* pc = p + c * kLanes;
        FASTIOU_SIMD
        for (int l = 0; l < kLanes; ++l) {
          m_odd[l] = softmax_max(m_odd[l], pc[l]);
          m[l] = softmax_max(m[l], pc[l + kLanes]);
        }
      }
      if (c < C) {
        const A* pc = p + c * kLanes;
        FASTIOU_SIMD
        for (int l = 0; l < kLanes; ++l) m_odd[l] = softmax_max(m_odd[l], pc[l]);
      }
      FASTIOU_SIMD
      for (int l = 0; l < kLanes; ++l) m[l] = softmax_max(m[l], m_odd[l]);
      for (c = 0; c < C; ++c) {
        A* pc = p + c * kLanes;
        FASTIOU_SIMD
        for (int l = 0; l < kLanes; ++l) {
          pc[l] = softmax_exp(pc[l], m[l]);
          sum[l] += pc[l];
        }
      }
      FASTIOU_SIMD
      for (int l = 0; l < kLanes; ++l) scale[l] = softmax_inverse(sum[l]);
    } else {
      for (Channel c = 0; c < C; ++c) {
        A* pc = p + c * kLanes;
        FASTIOU_SIMD
        for (int l = 0; l < kLanes; ++l) pc[l] = sigmoid(pc[l]);
      }
    }
  }
}

// Writes a tile's values d, transposed (d[c * kLanes + l] for channel c of
// lane l, d holding transposed_tile_values(C)), as stored: o[l * C + c] for
// the tile's first `valid` pixels.
// Whole float tiles go kLanes channels at a time through an in-register
// transpose (AVX2, AVX-512); the values are copied, not computed, so every
// way writes the same bits.
template <typename TP, typename A>
void store_tile(const A* d, Channel C, int valid, TP* o) {
#if defined(__AVX512F__) || defined(__AVX2__)
  if constexpr (std::is_same_v<TP, float> && std::is_same_v<A, float>) {
    if (valid == kLanes) {
      for (Channel c0 = 0; c0 < C; c0 += kLanes) {
        const int n = static_cast<int>(std::min<Channel>(kLanes, C - c0));
#if defined(__AVX512F__)
        __m512 r[kLanes];
        for (int j = 0; j < kLanes; ++j) r[j] = _mm512_loadu_ps(d + int64_t(c0 + j) * kLanes);
        transpose_block(r);
        const __mmask16 keep = static_cast<__mmask16>((1u << n) - 1);
        for (int l = 0; l < kLanes; ++l) _mm512_mask_storeu_ps(o + int64_t(l) * C + c0, keep, r[l]);
#else
        __m256 r[kLanes];
        for (int j = 0; j < kLanes; ++j) r[j] = _mm256_loadu_ps(d + int64_t(c0 + j) * kLanes);
        transpose_block(r);
        const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int l = 0; l < kLanes; ++l) _mm256_maskstore_ps(o + int64_t(l) * C + c0, keep, r[l]);
#endif
      }
      return;
    }
  }
#endif
  for (int l = 0; l < valid; ++l)
    for (Channel c = 0; c < C; ++c) o[int64_t(l) * C + c] = store_as<TP>(d[int64_t(c) * kLanes + l]);
}

// Adds the kLanes values of v in a fixed tree order.
template <typename A>
double add_lanes(const A* v) {
  A s[kLanes];
  std::copy(v, v + kLanes, s);
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) s[l] += s[l + w];
  return s[0];
}

// Whether a tile takes the periodic read (probabilities, no weights, every
// one of its kLanes pixels counted): its kLanes * C values, as stored, are
// then C whole vectors whose element e is always channel e % C.
template <bool kLogits, bool kWeights, typename A>
bool periodic_tile(const PixelTile<A>& t) {
  if (kLogits || kWeights || t.valid != kLanes) return false;
  Channel all = 1;
  for (int l = 0; l < kLanes; ++l) all &= t.counted[l];
  return all != 0;
}

// The sums of one chunk (3 per channel in partial, as the workspace holds
// them) over its pixels, kLanes at a time; bad gets the chunk's first label
// out of range and, with kGuard (probabilities only), the first probability
// the range guards refuse.
//
// From probabilities, without weights, a tile whose pixels all count
// (periodic_tile) is read as stored: I and P are added up per element of the
// tile (span sums, each always of one channel, folded onto the channels at
// the end; I against the tile's one-hot targets laid out as the values are),
// and T gets the targets; no transposed read. Other tiles take the lane
// path. Which path a tile takes depends on the labels alone, so results stay
// bitwise the same from run to run.
template <bool kLogits, bool kWeights, bool kGuard, typename TP, typename TT>
void tile_stats_chunk(const PixelRule& rule, const TP* pred, const TT* labels, const TP* w, int64_t pixels,
                      int64_t chunk_first, double* partial, ChunkBad* bad) {
  using A = typename AccOf<TP>::type;
  const Channel C = static_cast<Channel>(rule.channels);
  const int64_t span = int64_t(C) * kLanes;
  A* p = thread_scratch<A>(7 * span + transposed_tile_values(C));
  A* si = p + transposed_tile_values(C);
  A* sp = si + span;
  A* st = sp + span;
  // The periodic tiles' I, P and T per element of a tile, and a tile's
  // targets as stored (1 at each pixel's class, else 0).
  A* si_periodic = st + span;
  A* sp_periodic = si_periodic + span;
  A* st_periodic = sp_periodic + span;
  A* targets = st_periodic + span;
  std::fill(si, si + 7 * span, A(0));
  // The range guards' register of the probabilities as stored, per lane
  // (unused without kGuard), and of the periodic tiles' values.
  FloatBits<A> seen[kLanes];
  std::fill(seen, seen + kLanes, 0);
  FloatBits<A> seen_periodic = 0;
  PixelTile<A> t;
  for (int64_t first = 0; first < pixels; first += kLanes) {
    read_tile<kWeights>(rule, labels, w, first, pixels, chunk_first, &t, bad);
    if (periodic_tile<kLogits, kWeights>(t)) {
      const TP* x = pred + first * C;
      prefetch_tiles_ahead(x, span);
      // The targets: one-hot of each pixel's class (ClassTargets).
      for (int l = 0; l < kLanes; ++l) targets[int64_t(l) * C + t.cls[l]] = A(1);
      FloatBits<A> s = seen_periodic;  // a reduction on a local
#pragma omp simd reduction(max : s)
      for (int64_t e = 0; e < span; ++e) {
        const A v = load_as<A>(x[e]);
        if constexpr (kGuard) widen_range(v, s);
        accumulate_overlap(v, targets[e], A(1), si_periodic[e], sp_periodic[e], st_periodic[e]);
      }
      seen_periodic = s;
      for (int l = 0; l < kLanes; ++l) targets[int64_t(l) * C + t.cls[l]] = A(0);
      continue;
    }
    A scale[kLanes];
    tile_probabilities<kLogits>(rule, tile_predictions(rule, pred + first * C, t), p, scale);
    for (Channel c = 0; c < C; ++c) {
      const int64_t k = int64_t(c) * kLanes;
      FASTIOU_SIMD
      for (int l = 0; l < kLanes; ++l) {
        // Pixels that count nowhere add exact zeros, whatever their prediction.
        const bool on = t.counted[l] != 0;
        const A pv = select(on, kLogits ? softmax_scale(p[k + l], scale[l]) : p[k + l], A(0));
        if constexpr (kGuard) widen_range(pv, seen[l]);
        accumulate_overlap(pv, ClassTargets<A>{t.cls[l]}(c), select(on, t.weight[l], A(0)), si[k + l], sp[k + l],
                           st[k + l]);
      }
    }
  }
  if constexpr (kGuard) {
    static_assert(!kLogits, "the tile path guards probabilities only");
    bool alarm = range_alarm<A>(seen_periodic);
    for (int l = 0; l < kLanes; ++l) alarm = alarm || range_alarm<A>(seen[l]);
    if (alarm && !bad->found())
      *bad = first_bad_value<kLogits>(rule, pred, static_cast<const TT*>(nullptr), labels, pixels, chunk_first);
  }
  A folded_i[kLanes], folded_p[kLanes], folded_t[kLanes];
  for (Channel c = 0; c < C; ++c) {
    // The periodic sums of channel c: elements c, c + C, ... of a tile.
    for (int l = 0; l < kLanes; ++l) {
      folded_i[l] = si_periodic[int64_t(l) * C + c];
      folded_p[l] = sp_periodic[int64_t(l) * C + c];
      folded_t[l] = st_periodic[int64_t(l) * C + c];
    }
    partial[3 * c] = add_lanes(si + int64_t(c) * kLanes) + add_lanes(folded_i);
    partial[3 * c + 1] = add_lanes(sp + int64_t(c) * kLanes) + add_lanes(folded_p);
    partial[3 * c + 2] = add_lanes(st + int64_t(c) * kLanes) + add_lanes(folded_t);
  }
}

// The gradient of one chunk, kLanes pixels at a time: out points at the
// chunk's first element; gi, gp, gt at its group row of dL/dI, dL/dP, dL/dT.
// stream: the output takes streaming stores (store_values): the chunk is
// then made in a staging buffer (in the core's cache) and leaves from there
// as its tiles are made (stream_ready), every line whole.
template <bool kLogits, bool kWeights, bool kWrtTrue, typename TP, typename TT>
void tile_grad_chunk(const PixelRule& rule, const TP* pred, const TT* labels, const TP* w, int64_t pixels,
                     const typename AccOf<TP>::type* gi, const typename AccOf<TP>::type* gp,
                     const typename AccOf<TP>::type* gt, TP* out, bool stream) {
  using A = typename AccOf<TP>::type;
  const Channel C = static_cast<Channel>(rule.channels);
  const int64_t values = transposed_tile_values(C);
  A* p = thread_scratch<A>(2 * values);
  A* d = p + values;
  TP* staged = stream ? thread_scratch<TP, 6>(pixels * C) : nullptr;
  int64_t sent = 0;  // staged values streamed out (stream_ready)
  // Probabilities need the prediction only for the sigmoid's Jacobian or for
  // the gradient with respect to the target. d's channels past C are moved by
  // store_tile's whole blocks, never stored: zeros.
  constexpr bool kNeedsPred = kLogits || kWrtTrue;
  std::fill(p, p + 2 * values, A(0));
  // The lanes' softmax scales (tile_probabilities); 1 where p is not read.
  A scale[kLanes];
  std::fill(scale, scale + kLanes, A(1));
  PixelTile<A> t;
  dispatch_grad_kind(grad_kind(rule, kWrtTrue), [&](auto kind) {
    constexpr GradKind K = decltype(kind)::value;
    for (int64_t first = 0; first < pixels; first += kLanes) {
      read_tile<kWeights>(rule, labels, w, first, pixels, 0, &t, static_cast<ChunkBad*>(nullptr));
      if (kNeedsPred) tile_probabilities<kLogits>(rule, tile_predictions(rule, pred + first * C, t), p, scale);
      if constexpr (K == GradKind::kSoftmax) {
        // channel_gradient's softmax in two walks: the first keeps each
        // channel's dL/dp (softmax_upstream) in d and adds up the dot, the
        // second takes d through the Jacobian, so dL/dp is made once.
        A dot[kLanes] = {};
        for (Channel c = 0; c < C; ++c) {
          const int64_t k = int64_t(c) * kLanes;
          FASTIOU_SIMD
          for (int l = 0; l < kLanes; ++l) {
            const A dp = softmax_upstream(ClassTargets<A>{t.cls[l]}(c), t.weight[l], gi[c], gp[c]);
            d[k + l] = dp;
            dot[l] += softmax_dot_term(softmax_scale(p[k + l], scale[l]), dp);
          }
        }
        for (Channel c = 0; c < C; ++c) {
          const int64_t k = int64_t(c) * kLanes;
          FASTIOU_SIMD
          for (int l = 0; l < kLanes; ++l) {
            // As above: exact zeros for ignored pixels.
            const A v = softmax_backward(softmax_scale(p[k + l], scale[l]), d[k + l], dot[l]);
            d[k + l] = select(t.live[l] != 0, v, A(0));
          }
        }
      } else {
        for (Channel c = 0; c < C; ++c) {
          const int64_t k = int64_t(c) * kLanes;
          FASTIOU_SIMD
          for (int l = 0; l < kLanes; ++l) {
            // Ignored pixels get exact zeros, whatever their prediction.
            const A pv = kLogits ? softmax_scale(p[k + l], scale[l]) : p[k + l];
            const A v = channel_gradient<K>(pv, ClassTargets<A>{t.cls[l]}(c), t.weight[l], gi[c], gp[c], gt[c],
                                            A(0));
            d[k + l] = select(t.live[l] != 0, v, A(0));
          }
        }
      }
      store_tile(d, C, t.valid, (stream ? staged : out) + first * C);
      if (stream) stream_ready(out, staged, (first + t.valid) * C, false, &sent);
    }
  });
  if (stream) {
    stream_ready(out, staged, pixels * C, true, &sent);
    stream_fence(true);
  }
}

// The gradient of one chunk from probabilities, without weights, with
// respect to the prediction: it needs no prediction, and each element's
// value is one of two per channel, channel_gradient's with target 0 (v0) and
// with target 1 (v1). A tile of kLanes pixels is written as stored: the tile
// of v0 values (span values, made once per chunk) copied whole, then each
// pixel's class set to v1; ignored pixels get zeros, as pixel_gradient gives
// them. gi, gp, gt: the chunk's group row of dL/dI, dL/dP, dL/dT.
template <typename TP, typename TT>
void periodic_grad_chunk(const PixelRule& rule, const TT* labels, int64_t pixels,
                         const typename AccOf<TP>::type* gi, const typename AccOf<TP>::type* gp,
                         const typename AccOf<TP>::type* gt, TP* out, bool stream) {
  using A = typename AccOf<TP>::type;
  constexpr GradKind K = GradKind::kProbabilities;
  const Channel C = static_cast<Channel>(rule.channels);
  const int64_t span = int64_t(C) * kLanes;
  TP* pattern = thread_scratch<TP, 5>(span + C);
  TP* v1 = pattern + span;
  for (Channel c = 0; c < C; ++c) {
    const TP v0 = store_as<TP>(channel_gradient<K>(A(0), A(0), A(1), gi[c], gp[c], gt[c], A(0)));
    v1[c] = store_as<TP>(channel_gradient<K>(A(0), A(1), A(1), gi[c], gp[c], gt[c], A(0)));
    for (int l = 0; l < kLanes; ++l) pattern[int64_t(l) * C + c] = v0;
  }
  const TP zero = store_as<TP>(A(0));
  // With streaming stores the chunk is made in a staging buffer (in the
  // core's cache) and leaves from there as its tiles are made
  // (stream_ready): every line is whole when it goes, so none is read for
  // ownership or written twice.
  TP* staged = stream ? thread_scratch<TP, 6>(pixels * C) : nullptr;
  int64_t sent = 0;  // staged values streamed out (stream_ready)
  PixelTile<A> t;
  for (int64_t first = 0; first < pixels; first += kLanes) {
    read_tile<false>(rule, labels, static_cast<const TP*>(nullptr), first, pixels, 0, &t,
                     static_cast<ChunkBad*>(nullptr));
    TP* o = (stream ? staged : out) + first * C;
    Channel all = t.valid == kLanes;
    for (int l = 0; l < kLanes; ++l) all &= t.live[l];
    if (all) {
      FASTIOU_SIMD
      for (int64_t e = 0; e < span; ++e) o[e] = pattern[e];
    } else {
      for (int l = 0; l < t.valid; ++l) {
        TP* row = o + int64_t(l) * C;
        if (t.live[l]) {
          std::copy(pattern, pattern + C, row);
        } else {
          std::fill(row, row + C, zero);
        }
      }
    }
    // The class of each pixel that has one and a gradient (not an ignored
    // one, nor a label out of range, which matches no channel).
    for (int l = 0; l < t.valid; ++l)
      if (t.live[l] && t.cls[l] >= 0) o[int64_t(l) * C + t.cls[l]] = v1[t.cls[l]];
    if (stream) stream_ready(out, staged, (first + t.valid) * C, false, &sent);
  }
  if (stream) {
    stream_ready(out, staged, pixels * C, true, &sent);
    stream_fence(true);
  }
}

}  // namespace cpu
FASTIOU_LEVEL_END
}  // namespace fastiou
