// QuantizeSim arithmetic shared by the CPU and the CUDA kernels (ristretto-onnx).
//
// Each function reproduces one numpy reference quantizer of ristretto_onnx/formats.py bit for bit
// on float32 (thesis ch. 5-7): fixed point, unsigned fixed point (ufixed), minifloat (no denormals, saturating, flush to a signed
// zero) and power-of-two (rounded in the log domain, both zeros give +0). NaN gives NaN, +-inf
// saturates. Where float32 arithmetic is not provably exact the computation runs in float64, as
// the reference does; the last conversion to float32 is exact by the formats' limits.
//
// Stochastic rounding draws u in [0, 1) from a counter-based hash of (seed, run, element index), so
// the result does not depend on the thread count and the CPU and CUDA kernels agree.
#pragma once

#include <cstdint>
#include <cstring>
#include <cmath>

#if defined(__CUDACC__)
#define QSIM_HD __host__ __device__ __forceinline__
#else
#define QSIM_HD inline
#endif

namespace qsim {

enum Kind : int { kFixed = 0, kMinifloat = 1, kPow2 = 2, kUFixed = 3 };

// One channel's parameters (a scalar format has exactly one).
struct Chan {
  float scale;  // fixed: 2^frac
  float inv;    // fixed: 2^-frac
  float lo;     // fixed: -2^(bits-1); ufixed: 0
  float hi;     // fixed: float32(2^(bits-1) - 1), ufixed: float32(2^bits - 1) (exact up to 24 bits; see fixed_ne)
  double dhi;   // the same bound, exact (stochastic rounding runs in float64)
  int emin;     // pow2: exponent window
  int emax;
};

// What a kernel needs besides the channels.
struct Spec {
  int kind;
  int stochastic;
  int mant;         // minifloat mantissa bits
  int mf_emin;      // minifloat smallest exponent
  double mf_max;    // minifloat largest value
  double mf_minpos; // minifloat smallest normal
  uint32_t thr;     // pow2: mantissa field >= thr  <=>  mantissa >= sqrt(2) (float64 sqrt(2))
  int mf_fast;         // minifloat: the float32 bit-pattern path applies (see minifloat_ne32)
  uint32_t mf_drop;    // minifloat: 23 - mantissa bits (float32 mantissa bits rounded away)
  uint32_t mf_minbits; // minifloat: float32 bits of 2^emin (smallest normal)
  uint32_t mf_maxbits; // minifloat: float32 bits of the largest value
  uint32_t mf_tbits;   // minifloat: float32 bits of 2^emin - 2^(emin-m-1) (rounds up to 2^emin)
  uint32_t mf_bias;    // minifloat: 2^(drop-1) - 1 (0 when nothing is dropped): half minus one
  uint32_t mf_keep;    // minifloat: mask of the kept bits, ~(2^drop - 1)
  uint32_t mf_lsbmask; // minifloat: 1 when the last kept bit is a stored bit (0 < drop < 23), else 0
  uint32_t mf_lsbone;  // minifloat: 1 when it is the implicit leading 1 (m = 0, drop = 23), else 0
  uint32_t mf_small;   // minifloat: |x| bits from which a value below 2^emin rounds up to 2^emin
  int64_t channels; // 1 for a scalar format
  int64_t inner;    // elements per run of one channel: channel = (i / inner) % channels
  uint64_t seed;
  uint64_t run;     // call counter of the kernel (stochastic rounding)
};

QSIM_HD uint32_t f2u(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
QSIM_HD float u2f(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }
QSIM_HD double p2d(int k) {  // 2^k for -1022 <= k <= 1023
  uint64_t u = static_cast<uint64_t>(k + 1023) << 52;
  double d; memcpy(&d, &u, 8); return d;
}

QSIM_HD uint64_t mix64(uint64_t z) {  // splitmix64 finalizer
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) with 53 random bits, a function of (seed, run, index) only.
QSIM_HD double uniform(uint64_t seed, uint64_t run, uint64_t index) {
  uint64_t h = mix64(seed ^ mix64(run ^ mix64(index)));
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);
}

// Fixed point, round half to even, in float32: x * 2^f is exact (or so small that it rounds to a
// signed zero either way), rint is half-even, the bounds are integers, and k * 2^-f is exact
// (k has at most 24 significant bits: rounding only happens below 2^23). For bits > 24 the upper
// bound rounds to 2^(bits-1) in float32, as the reference's final conversion does.
// NaN passes the comparisons unchanged.
QSIM_HD float fixed_ne(float x, const Chan& c) {
  float v = rintf(x * c.scale);
  v = v < c.lo ? c.lo : (v > c.hi ? c.hi : v);
  return v * c.inv;
}

// Fixed point, stochastic: floor(x 2^f + u) in float64 like the reference (signed or unsigned:
// the bounds come from the channel; + 0.0 turns an unsigned -0 into +0, as the reference does).
QSIM_HD float fixed_sr(float x, const Chan& c, double u) {
  double v = floor(static_cast<double>(x) * static_cast<double>(c.scale) + u);
  double lo = static_cast<double>(c.lo), hi = c.dhi;
  v = v < lo ? lo : (v > hi ? hi : v);
  if (lo == 0.0) v = v + 0.0;
  return static_cast<float>(v * static_cast<double>(c.inv));
}

// Unsigned fixed point, round half to even: fixed_ne with the bounds [0, 2^bits - 1]; a zero
// result is +0 (a small negative rounds to -0, and -0 + 0 = +0). NaN passes.
QSIM_HD float ufixed_ne(float x, const Chan& c) {
  float v = rintf(x * c.scale);
  v = v < 0.0f ? 0.0f : (v > c.hi ? c.hi : v);
  return v * c.inv + 0.0f;
}

// Minifloat in float64: e = max(floor(log2|x|), emin) from the exponent field (subnormal inputs
// lie below every emin; inf/NaN get e = 128, which keeps them inf/NaN), q = round(x 2^(m-e)) 2^(e-m),
// saturate, flush |q| < 2^emin to a zero of q's sign. u < 0 means round half to even.
QSIM_HD float minifloat(float x, const Spec& s, double u) {
  int e = static_cast<int>((f2u(x) >> 23) & 0xffu) - 127;
  e = e < s.mf_emin ? s.mf_emin : e;
  double t = static_cast<double>(x) * p2d(s.mant - e);
  double r = u < 0.0 ? rint(t) : floor(t + u);
  double q = r * p2d(e - s.mant);
  q = q < -s.mf_max ? -s.mf_max : (q > s.mf_max ? s.mf_max : q);
  q = fabs(q) < s.mf_minpos ? q * 0.0 : q;
  return static_cast<float>(q);
}

// Minifloat, round half to even, on the float32 bit pattern (used when Spec::mf_fast): for
// |x| >= 2^emin, rounding x to m mantissa bits is rounding its magnitude's bit pattern at bit
// 23 - m (half to even; a carry moves into the exponent, as rounding up to the next binade
// does), then saturating (inf saturates too). Below 2^emin, round(x 2^(m-emin)) 2^(emin-m) is
// either +-2^emin (when |x| reaches the midpoint 2^emin - 2^(emin-m-1); the midpoint itself
// goes up iff 2^m is even, i.e. m >= 1) or a value below 2^emin that is flushed to a zero of
// x's sign. Non-negative floats order like their bit patterns. NaN stays NaN.
//
// Branch-free, with the per-format constants of set_minifloat_rounding, so that the loop is a
// few integer vector operations and three comparisons (checked against the branching form it
// replaced on all 2^32 float32 patterns for minifloat 8:3, 8:4, 5:4 (m = 0), 2:1, 3:1 and 16:5).
QSIM_HD float minifloat_ne32(float x, const Spec& s) {
  uint32_t b = f2u(x);
  uint32_t a = b & 0x7fffffffu;
  // round the magnitude at bit `drop` half to even: add half - 1 + the last kept bit, truncate
  uint32_t lsb = ((a >> s.mf_drop) & s.mf_lsbmask) | s.mf_lsbone;
  uint32_t r = (a + s.mf_bias + lsb) & s.mf_keep;
  r = r > s.mf_maxbits ? s.mf_maxbits : r;                  // saturate (inf too)
  uint32_t low = a >= s.mf_small ? s.mf_minbits : 0u;        // below 2^emin: 2^emin or a zero
  uint32_t q = a >= s.mf_minbits ? r : low;
  return u2f(a > 0x7f800000u ? (b | 0x00400000u) : ((b & 0x80000000u) | q));  // NaN: quieted
}

// The constants minifloat_ne32 uses, from mf_drop, mant and mf_tbits. The midpoint below 2^emin
// rounds up iff 2^m is even (m >= 1), hence the threshold one above it when m = 0.
inline void set_minifloat_rounding(Spec& s) {
  s.mf_bias = s.mf_drop > 0u ? (1u << (s.mf_drop - 1u)) - 1u : 0u;
  s.mf_keep = s.mf_drop > 0u ? ~((1u << s.mf_drop) - 1u) : 0xffffffffu;
  s.mf_lsbmask = s.mf_drop > 0u && s.mf_drop < 23u ? 1u : 0u;
  s.mf_lsbone = s.mf_drop == 23u ? 1u : 0u;
  s.mf_small = s.mf_tbits + (s.mant > 0 ? 0u : 1u);
}

// Power of two on the bit pattern: f = floor(log2|x|) from the exponent field (subnormals get
// -127, below every allowed EMIN), up when the mantissa reaches sqrt(2) (nearest) or with
// probability equal to the mantissa's fraction (stochastic, u >= 0), clip to [emin, emax].
QSIM_HD float pow2(float x, const Chan& c, uint32_t thr, double u) {
  uint32_t b = f2u(x);
  uint32_t a = b & 0x7fffffffu;
  if (a > 0x7f800000u) return x;     // NaN
  if (a == 0u) return 0.0f;          // both zeros give +0
  uint32_t mant = a & 0x7fffffu;
  int f = static_cast<int>(a >> 23) - 127;
  int up = u < 0.0 ? (mant >= thr) : (u < static_cast<double>(mant) * (1.0 / 8388608.0));
  int k = f + up;
  k = k < c.emin ? c.emin : (k > c.emax ? c.emax : k);
  return u2f((b & 0x80000000u) | (static_cast<uint32_t>(k + 127) << 23));
}

// One element at flat index i (generic path; the CPU kernel has vectorized loops for the common
// nearest-even cases).
QSIM_HD float element(const Spec& s, const Chan& c, float x, uint64_t i) {
  double u = s.stochastic ? uniform(s.seed, s.run, i) : -1.0;
  switch (s.kind) {
    case kFixed: return s.stochastic ? fixed_sr(x, c, u) : fixed_ne(x, c);
    case kUFixed: return s.stochastic ? fixed_sr(x, c, u) : ufixed_ne(x, c);
    case kMinifloat: return s.stochastic || !s.mf_fast ? minifloat(x, s, u) : minifloat_ne32(x, s);
    default: return pow2(x, c, s.thr, u);
  }
}

}  // namespace qsim
