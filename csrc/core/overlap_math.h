// Per-element math shared by every fastiou back end.
//
// Everything a kernel does to one element (load and convert, activation,
// accumulation into the overlap sums, the gradient and the activation's
// Jacobian) lives here as inline host/device functions, so the C++ and CUDA
// kernels compile the same formulas and cannot drift apart.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/simd_level.h"

// Always inlined: a per-element call the compiler declines to inline keeps the
// calling loop from vectorizing, which costs more than 10x on logits.
#if defined(__CUDACC__)
#define FASTIOU_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define FASTIOU_HD inline __attribute__((always_inline))
#else
#define FASTIOU_HD inline
#endif

// A loop reduction the compiler may split across vector lanes (OpenMP SIMD,
// -fopenmp-simd): the lanes' partial results are combined in a fixed order
// set by the build's vector width, so results stay the same on every run.
// Device code keeps the loop as written.
#if defined(__CUDACC__)
#define FASTIOU_SIMD_REDUCE(op, var)
#else
#define FASTIOU_PRAGMA(x) _Pragma(#x)
#define FASTIOU_SIMD_REDUCE(op, var) FASTIOU_PRAGMA(omp simd reduction(op : var))
#endif

namespace fastiou {
FASTIOU_LEVEL_BEGIN

// A channel index in the per-pixel loops: 32-bit, which vector units compare
// and count as cheaply as floats (64-bit indices cost shuffles in every
// vectorized channel loop). y_pred has at most kMaxChannels channels.
using Channel = int32_t;

// 16-bit float storage types. They are layout-compatible with Eigen::half,
// Eigen::bfloat16, __half and __nv_bfloat16, so any framework's buffer can be
// read through them; the arithmetic is always done in float or double.
struct f16_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};

FASTIOU_HD float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

FASTIOU_HD uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// The bits of a float type as the unsigned integer of its width, and a
// value's bits read as that integer (the argmax key, the zero and subnormal
// test, the range guards' register).
template <typename A>
using FloatBits = std::conditional_t<sizeof(A) == 8, uint64_t, uint32_t>;

template <typename A>
FASTIOU_HD FloatBits<A> bits_of(A v) {
  FloatBits<A> b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

FASTIOU_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  // Zero or subnormal: mantissa units of 2^-24, exact in float.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return bits_to_float(sign | float_to_bits(magnitude));
}

// Round to nearest, ties to even; overflow gives infinity, NaN stays NaN.
FASTIOU_HD uint16_t float_to_half_bits(float f) {
  const uint32_t x = float_to_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520
  if (ax >= 0x38800000u) {  // normal half range, >= 2^-14
    const uint32_t rem = ax & 0x1fffu;
    uint32_t h = (((ax >> 23) - 112u) << 10) | ((ax >> 13) & 0x3ffu);
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent
    return static_cast<uint16_t>(sign | h);
  }
  if (ax < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25 rounds to zero
  const uint32_t mantissa = (ax & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - (ax >> 23);  // 14..24
  const uint32_t halfway = 1u << (shift - 1);
  const uint32_t rem = mantissa & ((1u << shift) - 1u);
  uint32_t h = mantissa >> shift;
  if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

FASTIOU_HD uint16_t float_to_bfloat16_bits(float f) {
  const uint32_t x = float_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// Load one stored value as the accumulation type.
template <typename Acc, typename T>
FASTIOU_HD Acc load_as(T v) {
  return static_cast<Acc>(v);
}
template <>
FASTIOU_HD float load_as<float, f16_t>(f16_t v) {
  return half_bits_to_float(v.bits);
}
template <>
FASTIOU_HD float load_as<float, bf16_t>(bf16_t v) {
  return bits_to_float(static_cast<uint32_t>(v.bits) << 16);
}
template <>
FASTIOU_HD double load_as<double, f16_t>(f16_t v) {
  return half_bits_to_float(v.bits);
}
template <>
FASTIOU_HD double load_as<double, bf16_t>(bf16_t v) {
  return bits_to_float(static_cast<uint32_t>(v.bits) << 16);
}

// Store one computed value in the tensor's type.
template <typename T, typename Acc>
FASTIOU_HD T store_as(Acc v) {
  return static_cast<T>(v);
}
template <>
FASTIOU_HD f16_t store_as<f16_t, float>(float v) {
  return f16_t{float_to_half_bits(v)};
}
template <>
FASTIOU_HD bf16_t store_as<bf16_t, float>(float v) {
  return bf16_t{float_to_bfloat16_bits(v)};
}

// Accumulation type for a prediction type: float64 predictions accumulate in
// double, every narrower type in float.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// c ? a : b through bit masks. A plain conditional with a constant arm lets
// compilers split the loop into branches (jump threading) and then give up on
// vectorizing it; one that updates values kept across iterations may become
// a branch on whether any vector lane changes, which data decide at random.
FASTIOU_HD float select(bool c, float a, float b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return bits_to_float((m & float_to_bits(a)) | (~m & float_to_bits(b)));
}
FASTIOU_HD double select(bool c, double a, double b) {
  const uint64_t m = 0u - static_cast<uint64_t>(c);
  uint64_t ua, ub;
  std::memcpy(&ua, &a, sizeof ua);
  std::memcpy(&ub, &b, sizeof ub);
  const uint64_t u = (m & ua) | (~m & ub);
  double r;
  std::memcpy(&r, &u, sizeof r);
  return r;
}
FASTIOU_HD int32_t select(bool c, int32_t a, int32_t b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return static_cast<int32_t>((m & static_cast<uint32_t>(a)) | (~m & static_cast<uint32_t>(b)));
}
FASTIOU_HD int64_t select(bool c, int64_t a, int64_t b) {
  const uint64_t m = 0u - static_cast<uint64_t>(c);
  return static_cast<int64_t>((m & static_cast<uint64_t>(a)) | (~m & static_cast<uint64_t>(b)));
}

// e^x in float without libm: x = k ln2 + r with |r| <= ln2/2, e^r as
// 1 + r q(r) with q of degree 4 (coefficients fitted for the least largest
// relative error over that interval: 9.2e-8), times 2^k built in the
// exponent bits. k + 127 is read off the bits of x log2(e) + 1.5 * 2^23 +
// 127, whose last mantissa bits then hold it, so no float-to-integer
// conversion is needed. Within 2 ulp of e^x where multiply-adds are fused
// (the x86-64-v3 and -v4 kernels, the GPU) and 2.3 ulp where they are not
// (x86-64-v2), over every float of the range against double precision;
// exactly 1 at 0. Branch-free, so compilers vectorize the loops that call
// it, and the same code runs on the GPU, which keeps CPU and CUDA results
// alike. x is clamped to [-87.3, 88.3], where 2^k stays a normal float
// (k + 127 in [1, 254]); NaN passes through.
FASTIOU_HD float exp_(float x) {
  x = select(x < -87.3f, -87.3f, x);
  x = select(x > 88.3f, 88.3f, x);
  // Rounds x / ln2 to the nearest integer k, plus 127, in y's last bits.
  const float shifter = 12582912.0f + 127.0f;
  const float y = x * 1.44269504088896341f + shifter;
  const float k = y - shifter;
  float r = x - k * 0.693145751953125f;  // ln2 split in two for an exact product
  r = r - k * 1.42860682028622680e-6f;
  float q = 0.008290254510939121f;
  q = q * r + 0.04189814254641533f;
  q = q * r + 0.1666763871908188f;
  q = q * r + 0.4999914765357971f;
  q = q * r + 0.9999997019767761f;
  const float p = q * r + 1.0f;
  // y's mantissa ends in the 8 bits of k + 127 with a zero above them:
  // shifted to the exponent field, they are 2^k.
  return p * bits_to_float(float_to_bits(y) << 23);
}
FASTIOU_HD double exp_(double x) { return std::exp(x); }

// 1 / (1 + e^-z): exp overflows to +inf for very negative z and the result is
// then exactly 0, never NaN, so no branch is needed.
template <typename Acc>
FASTIOU_HD Acc sigmoid(Acc z) {
  return Acc(1) / (Acc(1) + exp_(-z));
}

// The probability an element's prediction stands for.
template <bool kFromLogits, typename Acc>
FASTIOU_HD Acc probability(Acc x) {
  if constexpr (kFromLogits) {
    return sigmoid(x);
  } else {
    return x;
  }
}

// One element's share of I = sum w t p, P = sum w p, T = sum w t.
template <typename Acc>
FASTIOU_HD void accumulate_overlap(Acc p, Acc t, Acc w, Acc& sum_i, Acc& sum_p, Acc& sum_t) {
  const Acc wp = w * p;
  sum_i += wp * t;
  sum_p += wp;
  sum_t += w * t;
}

// dL/dy_pred for one element, given g_I = dL/dI and g_P = dL/dP of its group:
// dL/dp = w (g_I t + g_P), times the sigmoid's Jacobian p (1 - p) for logits.
template <bool kFromLogits, typename Acc>
FASTIOU_HD Acc pred_gradient(Acc p, Acc t, Acc w, Acc g_i, Acc g_p) {
  const Acc dp = w * (g_i * t + g_p);
  if constexpr (kFromLogits) {
    return dp * p * (Acc(1) - p);
  } else {
    return dp;
  }
}

// dL/dy_true for one element: w (g_I p + g_T).
template <typename Acc>
FASTIOU_HD Acc true_gradient(Acc p, Acc w, Acc g_i, Acc g_t) {
  return w * (g_i * p + g_t);
}

// Softmax of a pixel's C logits, p_c = e^(z_c - m) / sum_k e^(z_k - m), with m
// the maximum, so that no exponent overflows. It is built from the four steps
// below, the one definition of its arithmetic; the kernels differ only in
// where they keep the pixel: in registers (softmax_norm once, then each p_c
// with softmax_prob: the CUDA kernels), in an array (softmax_inplace: the
// host's channel path), or transposed across vector lanes (the host's pixel
// tiles, csrc/cpu/pixel_tile.h). The host adds the exponentials across vector
// lanes and compilers fuse multiply-adds differently, so CPU and GPU agree
// to rounding, not bitwise.
template <typename Acc>
FASTIOU_HD Acc softmax_max(Acc m, Acc z) {
  return z > m ? z : m;
}
template <typename Acc>
FASTIOU_HD Acc softmax_exp(Acc z, Acc max) {
  return exp_(z - max);
}
template <typename Acc>
FASTIOU_HD Acc softmax_inverse(Acc sum) {
  return Acc(1) / sum;
}
template <typename Acc>
FASTIOU_HD Acc softmax_scale(Acc e, Acc inv_sum) {
  return e * inv_sum;
}

template <typename Acc>
struct SoftmaxNorm {
  Acc max;
  Acc inv_sum;
};

// z(c) loads logit c of the pixel as Acc.
template <typename Acc, typename Load>
FASTIOU_HD SoftmaxNorm<Acc> softmax_norm(const Load& z, int64_t channels) {
  Acc m = z(0);
  for (int64_t c = 1; c < channels; ++c) m = softmax_max(m, Acc(z(c)));
  Acc sum = 0;
  for (int64_t c = 0; c < channels; ++c) sum += softmax_exp(Acc(z(c)), m);
  return SoftmaxNorm<Acc>{m, softmax_inverse(sum)};
}

template <typename Acc>
FASTIOU_HD Acc softmax_prob(Acc z, SoftmaxNorm<Acc> n) {
  return softmax_scale(softmax_exp(z, n.max), n.inv_sum);
}

// The maximum and the sum are reductions split across vector lanes on the
// host (FASTIOU_SIMD_REDUCE).
template <typename Acc>
FASTIOU_HD void softmax_inplace(Acc* x, int64_t channels) {
  const Channel n = static_cast<Channel>(channels);
  Acc m = x[0];
  FASTIOU_SIMD_REDUCE(max, m)
  for (Channel c = 1; c < n; ++c) m = softmax_max(m, x[c]);
  Acc sum = 0;
  FASTIOU_SIMD_REDUCE(+, sum)
  for (Channel c = 0; c < n; ++c) {
    x[c] = softmax_exp(x[c], m);
    sum += x[c];
  }
  const Acc inv = softmax_inverse(sum);
  for (Channel c = 0; c < n; ++c) x[c] = softmax_scale(x[c], inv);
}

// Softmax Jacobian applied to dL/dp of one pixel: dL/dz_k = p_k (dL/dp_k - dot)
// with dot = sum_c p_c dL/dp_c, accumulated over c in order.
template <typename Acc>
FASTIOU_HD Acc softmax_backward(Acc p, Acc dp, Acc dot) {
  return p * (dp - dot);
}

FASTIOU_LEVEL_END
}  // namespace fastiou
