// Standalone check of the CUDA QuantizeSim kernel without onnxruntime (ristretto-onnx, issue 14).
//
//   qsim_cuda_test IN.f32 SPECS.txt OUT.f32
//
// IN.f32 holds float32 values; each line of SPECS.txt is "FORMAT ROUNDING AXIS SHAPE SEED" (AXIS
// "-" for a scalar format, SHAPE comma-separated dims or "-" for all of IN, SEED for stochastic
// rounding, run 0). For every line the kernel quantizes the first prod(SHAPE) values of IN on the
// GPU; the results are appended to OUT.f32. bench/device_kernels.py compares them with numpy.
#include <cuda_runtime.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "qsim_cuda.h"
#include "qsim_format.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: qsim_cuda_test IN.f32 SPECS.txt OUT.f32\n";
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  std::vector<float> x;
  in.seekg(0, std::ios::end);
  size_t bytes = static_cast<size_t>(in.tellg());
  in.seekg(0);
  x.assign(bytes / 4, 0.0f);
  in.read(reinterpret_cast<char*>(x.data()), static_cast<std::streamsize>(x.size() * 4));
  int64_t n_all = static_cast<int64_t>(x.size());

  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    std::cerr << "no CUDA device\n";
    return 1;
  }
  std::cerr << "device: " << prop.name << " (sm_" << prop.major << prop.minor << ")\n";
  float *dx = nullptr, *dy = nullptr;
  cudaMalloc(&dx, x.size() * 4);
  cudaMalloc(&dy, x.size() * 4);
  cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice);
  cudaStream_t stream;
  cudaStreamCreate(&stream);

  std::ifstream specs(argv[2]);
  std::ofstream out(argv[3], std::ios::binary);
  std::string line;
  std::vector<float> y(x.size());
  int lines = 0;
  while (std::getline(specs, line)) {
    if (line.empty()) continue;
    std::istringstream ls(line);
    std::string fmt, rounding, axis_s, shape_s;
    unsigned long long seed = 0;
    ls >> fmt >> rounding >> axis_s >> shape_s >> seed;
    std::vector<int64_t> shape;
    int64_t n = n_all;
    if (shape_s != "-") {
      n = 1;
      std::stringstream ss(shape_s);
      std::string d;
      while (std::getline(ss, d, ',')) { shape.push_back(std::stoll(d)); n *= shape.back(); }
    } else {
      shape.push_back(n_all);
    }
    try {
      qsim::Format f = qsim::parse_format(fmt, rounding, axis_s != "-", axis_s == "-" ? 0 : std::stoll(axis_s));
      qsim::bind_shape(f, shape);
      f.spec.seed = seed;
      f.spec.run = 0;
      qsim_cuda::DeviceChans chans;
      const qsim::Chan* dchans = chans.get(f.chans.data(), f.chans.size(), stream);
      std::string err = qsim_cuda::launch(f.spec, f.chans[0], dchans, dx, dy, n, stream);
      if (!err.empty()) { std::cerr << fmt << ": " << err << "\n"; return 1; }
      cudaError_t e = cudaMemcpyAsync(y.data(), dy, n * 4, cudaMemcpyDeviceToHost, stream);
      if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
      if (e != cudaSuccess) { std::cerr << fmt << ": " << cudaGetErrorString(e) << "\n"; return 1; }
    } catch (const std::exception& ex) {
      std::cerr << line << ": " << ex.what() << "\n";
      return 1;
    }
    out.write(reinterpret_cast<const char*>(y.data()), static_cast<std::streamsize>(n * 4));
    ++lines;
  }
  std::cerr << lines << " formats quantized on the GPU\n";
  return 0;
}
