// Host interface of the CUDA QuantizeSim kernel (no CUDA headers needed by its users).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "qsim_math.h"

namespace qsim_cuda {

// Per-channel parameters uploaded to the device once (on the stream of the first call).
class DeviceChans {
 public:
  DeviceChans() = default;
  DeviceChans(const DeviceChans&) = delete;
  DeviceChans& operator=(const DeviceChans&) = delete;
  ~DeviceChans();
  // Device copy of chans[0..n) (nullptr for a scalar format: the launcher passes it by value).
  const qsim::Chan* get(const qsim::Chan* chans, size_t n, void* stream);

 private:
  qsim::Chan* ptr_ = nullptr;
  int device_ = -1;
};

// Quantize x[0..n) into y on `stream` (a cudaStream_t; nullptr = default stream). `scalar` is the
// only channel of a scalar format, `chans` the device copy of a per-channel one. Returns "" or an
// error message.
std::string launch(const qsim::Spec& spec, const qsim::Chan& scalar, const qsim::Chan* chans,
                   const float* x, float* y, int64_t n, void* stream);

}  // namespace qsim_cuda
