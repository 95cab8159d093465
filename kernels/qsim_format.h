// Parse a QuantizeSim format attribute ("fixed:8:4", "ufixed:8:4", "minifloat:8:5", "pow2:-8:-1", per-channel
// "fixed:8:5,7,6" / "pow2:-9,-8:-2,-1" with an axis) into the kernel's Spec and channels, with the
// limits of ristretto_onnx/formats.py. Host code only.
#pragma once

#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "qsim_math.h"

namespace qsim {

struct Format {
  Spec spec{};
  std::vector<Chan> chans;  // one per channel (one for a scalar format)
  bool per_channel = false;
  int64_t axis = 0;         // negative, counted from the end (per-channel only)
};

inline std::vector<long> parse_ints(const std::string& text, const std::string& whole) {
  std::vector<long> out;
  size_t start = 0;
  while (true) {
    size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    char* end = nullptr;
    long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0') throw std::invalid_argument("QuantizeSim: cannot parse format '" + whole + "'");
    out.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

inline Format parse_format(const std::string& text, const std::string& rounding, bool has_axis, int64_t axis) {
  Format f;
  size_t c1 = text.find(':'), c2 = text.find(':', c1 == std::string::npos ? 0 : c1 + 1);
  if (c1 == std::string::npos || c2 == std::string::npos || text.find(':', c2 + 1) != std::string::npos)
    throw std::invalid_argument("QuantizeSim: cannot parse format '" + text + "'");
  std::string kind = text.substr(0, c1);
  std::vector<long> a = parse_ints(text.substr(c1 + 1, c2 - c1 - 1), text);
  std::vector<long> b = parse_ints(text.substr(c2 + 1), text);
  size_t n = a.size() > b.size() ? a.size() : b.size();
  if ((a.size() != 1 && a.size() != n) || (b.size() != 1 && b.size() != n))
    throw std::invalid_argument("QuantizeSim: per-channel lists differ in length in '" + text + "'");
  if (rounding == "nearest_even") f.spec.stochastic = 0;
  else if (rounding == "stochastic") f.spec.stochastic = 1;
  else throw std::invalid_argument("QuantizeSim: unknown rounding '" + rounding + "'");
  f.per_channel = has_axis;
  if (!has_axis && n != 1) throw std::invalid_argument("QuantizeSim: a per-channel format needs an axis");
  if (has_axis && axis >= 0) throw std::invalid_argument("QuantizeSim: the axis attribute must be negative");
  f.axis = axis;
  auto at = [](const std::vector<long>& v, size_t i) { return v.size() == 1 ? v[0] : v[i]; };
  for (size_t i = 0; i < n; ++i) {
    Chan c{};
    long p = at(a, i), q = at(b, i);
    if (kind == "fixed") {
      f.spec.kind = kFixed;
      if (a.size() != 1) throw std::invalid_argument("QuantizeSim: per-channel fixed point shares its bits");
      if (p < 2 || p > 32) throw std::invalid_argument("QuantizeSim: fixed point needs 2 to 32 bits");
      if (-q < -126 || p - 1 - q > 127) throw std::invalid_argument("QuantizeSim: fixed point range exceeds float32");
      c.scale = std::ldexp(1.0f, static_cast<int>(q));
      c.inv = std::ldexp(1.0f, static_cast<int>(-q));
      c.lo = static_cast<float>(-std::ldexp(1.0, static_cast<int>(p - 1)));
      c.hi = static_cast<float>(std::ldexp(1.0, static_cast<int>(p - 1)) - 1.0);
      c.dhi = std::ldexp(1.0, static_cast<int>(p - 1)) - 1.0;
    } else if (kind == "ufixed") {
      f.spec.kind = qsim::kUFixed;
      if (has_axis) throw std::invalid_argument("QuantizeSim: ufixed has no per-channel form");
      if (p < 1 || p > 31) throw std::invalid_argument("QuantizeSim: unsigned fixed point needs 1 to 31 bits");
      if (-q < -126 || p - q > 127) throw std::invalid_argument("QuantizeSim: unsigned fixed point range exceeds float32");
      c.scale = std::ldexp(1.0f, static_cast<int>(q));
      c.inv = std::ldexp(1.0f, static_cast<int>(-q));
      c.lo = 0.0f;
      c.dhi = std::ldexp(1.0, static_cast<int>(p)) - 1.0;
      c.hi = static_cast<float>(c.dhi);
    } else if (kind == "minifloat") {
      f.spec.kind = kMinifloat;
      if (has_axis) throw std::invalid_argument("QuantizeSim: minifloat has no per-channel form");
      long bits = p, e = q, m = bits - 1 - e;
      if (bits < 2 || bits > 32 || e < 1 || m < 0 || m > 23 || e > 8)
        throw std::invalid_argument("QuantizeSim: unsupported minifloat '" + text + "'");
      long bias = (1L << (e - 1)) - 1, emin = 1 - bias, emax = (1L << e) - 1 - bias;
      if (emax > 127 || emin < -126) throw std::invalid_argument("QuantizeSim: minifloat range exceeds float32");
      f.spec.mant = static_cast<int>(m);
      f.spec.mf_emin = static_cast<int>(emin);
      f.spec.mf_max = (2.0 - std::ldexp(1.0, static_cast<int>(-m))) * std::ldexp(1.0, static_cast<int>(emax));
      f.spec.mf_minpos = std::ldexp(1.0, static_cast<int>(emin));
      // The float32 bit-pattern path (qsim_math.h minifloat_ne32) needs 2^emin, the largest
      // value and the rounding midpoint below 2^emin to be float32 numbers (checked, not assumed).
      double mid = std::ldexp(std::ldexp(1.0, static_cast<int>(m + 1)) - 1.0, static_cast<int>(emin - m - 1));
      float mid32 = static_cast<float>(mid), max32 = static_cast<float>(f.spec.mf_max);
      float min32 = static_cast<float>(f.spec.mf_minpos);
      f.spec.mf_fast = static_cast<double>(mid32) == mid && static_cast<double>(max32) == f.spec.mf_max &&
                       static_cast<double>(min32) == f.spec.mf_minpos && mid32 != 0.0f;
      f.spec.mf_drop = static_cast<uint32_t>(23 - m);
      f.spec.mf_minbits = qsim::f2u(min32);
      f.spec.mf_maxbits = qsim::f2u(max32);
      f.spec.mf_tbits = qsim::f2u(mid32);
      qsim::set_minifloat_rounding(f.spec);
    } else if (kind == "pow2") {
      f.spec.kind = kPow2;
      if (p > q || p < -125 || q > 126) throw std::invalid_argument("QuantizeSim: unsupported pow2 '" + text + "'");
      c.emin = static_cast<int>(p);
      c.emax = static_cast<int>(q);
    } else {
      throw std::invalid_argument("QuantizeSim: unknown format kind in '" + text + "'");
    }
    f.chans.push_back(c);
  }
  // Smallest 23-bit mantissa field whose value 1 + k 2^-23 is >= sqrt(2) in float64 (numpy's sqrt(2.0)).
  f.spec.thr = static_cast<uint32_t>(std::ceil((std::sqrt(2.0) - 1.0) * 8388608.0));
  f.spec.channels = static_cast<int64_t>(f.chans.size());
  f.spec.inner = 1;
  return f;
}

// Channels and elements per channel run for a tensor shape; throws when the shape does not fit.
inline void bind_shape(Format& f, const std::vector<int64_t>& shape) {
  if (!f.per_channel) { f.spec.channels = 1; f.spec.inner = 1; return; }
  int64_t rank = static_cast<int64_t>(shape.size());
  int64_t ax = rank + f.axis;
  if (ax < 0) throw std::invalid_argument("QuantizeSim: axis out of range for the input's rank");
  if (shape[ax] != static_cast<int64_t>(f.chans.size()))
    throw std::invalid_argument("QuantizeSim: per-channel format and input disagree on the channel count");
  int64_t inner = 1;
  for (int64_t d = ax + 1; d < rank; ++d) inner *= shape[d];
  f.spec.channels = static_cast<int64_t>(f.chans.size());
  f.spec.inner = inner;
}

}  // namespace qsim
