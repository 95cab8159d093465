// CUDA QuantizeSim kernel: one thread per element (grid-stride), the arithmetic of qsim_math.h.
#include <cuda_runtime.h>

#include <string>

#include "qsim_cuda.h"
#include "qsim_math.h"

namespace qsim_cuda {

namespace {

__global__ void quantize_kernel(qsim::Spec s, qsim::Chan scalar, const qsim::Chan* __restrict__ chans,
                                const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const qsim::Chan& c = chans == nullptr ? scalar : chans[(i / s.inner) % s.channels];
    y[i] = qsim::element(s, c, x[i], static_cast<uint64_t>(i));
  }
}

std::string error_text(cudaError_t e, const char* what) {
  return std::string("QuantizeSim CUDA ") + what + ": " + cudaGetErrorString(e);
}

}  // namespace

DeviceChans::~DeviceChans() {
  if (ptr_ != nullptr) {
    int current = -1;
    cudaGetDevice(&current);
    cudaSetDevice(device_);
    cudaFree(ptr_);
    cudaSetDevice(current);
  }
}

const qsim::Chan* DeviceChans::get(const qsim::Chan* chans, size_t n, void* stream) {
  if (n <= 1) return nullptr;
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) return nullptr;
  if (ptr_ != nullptr && device == device_) return ptr_;
  if (ptr_ != nullptr) cudaFree(ptr_);
  ptr_ = nullptr;
  if (cudaMalloc(&ptr_, n * sizeof(qsim::Chan)) != cudaSuccess) { ptr_ = nullptr; return nullptr; }
  device_ = device;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaMemcpyAsync(ptr_, chans, n * sizeof(qsim::Chan), cudaMemcpyHostToDevice, s);
  cudaStreamSynchronize(s);  // the host copy may move; the upload happens once per kernel
  return ptr_;
}

std::string launch(const qsim::Spec& spec, const qsim::Chan& scalar, const qsim::Chan* chans,
                   const float* x, float* y, int64_t n, void* stream) {
  if (n <= 0) return "";
  if (spec.channels > 1 && chans == nullptr) return "QuantizeSim CUDA: per-channel parameters not on the device";
  const int threads = 256;
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > 65535LL * 32) blocks = 65535LL * 32;
  quantize_kernel<<<static_cast<unsigned>(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(
      spec, scalar, spec.channels > 1 ? chans : nullptr, x, y, n);
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : error_text(e, "launch");
}

}  // namespace qsim_cuda
