// onnxruntime custom-op library for ai.ristretto::QuantizeSim (ristretto-onnx, issue 14).
//
// RegisterCustomOps adds the op to a session: a CPU kernel (vectorized loops, split over
// onnxruntime's intra-op thread pool) and, when built with RISTRETTO_WITH_CUDA, a CUDA kernel
// launched on onnxruntime's compute stream. Both are registered under the same domain and name,
// so a CPU-only session still finds a kernel. Built against the C API of onnxruntime 1.21
// (ORT_API_VERSION 21); GetApi is checked, so older runtimes get an error instead of a crash.
//
// Attributes: format (string, required), rounding ("nearest_even" | "stochastic"), axis (int,
// negative, per-channel formats), seed (int, stochastic rounding: the same seed gives the same
// noise sequence run after run of a new session; without it the noise is seeded at random).
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "qsim_format.h"
#include "qsim_math.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define QSIM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define QSIM_CLONES
#endif

namespace {

using qsim::Chan;
using qsim::Spec;

constexpr const char* kDomain = "ai.ristretto";
constexpr const char* kOpName = "QuantizeSim";
constexpr int64_t kBlock = 1 << 15;  // elements per parallel task

// ---- vectorized CPU loops (nearest even); stochastic rounding takes the generic path --------

QSIM_CLONES void loop_fixed_ne(const float* __restrict x, float* __restrict y, int64_t n, Chan c) {
  for (int64_t i = 0; i < n; ++i) y[i] = qsim::fixed_ne(x[i], c);
}

QSIM_CLONES void loop_minifloat_ne(const float* __restrict x, float* __restrict y, int64_t n, Spec s) {
  for (int64_t i = 0; i < n; ++i) y[i] = qsim::minifloat(x[i], s, -1.0);
}

QSIM_CLONES void loop_pow2_ne(const float* __restrict x, float* __restrict y, int64_t n, Chan c, uint32_t thr) {
  for (int64_t i = 0; i < n; ++i) y[i] = qsim::pow2(x[i], c, thr, -1.0);
}

void loop_generic(const float* x, float* y, int64_t begin, int64_t n, const Spec& s, const Chan& c) {
  for (int64_t i = 0; i < n; ++i) y[i] = qsim::element(s, c, x[i], static_cast<uint64_t>(begin + i));
}

// Elements [begin, end) of the flat tensor, in runs of one channel.
void quantize_range(const float* x, float* y, int64_t begin, int64_t end, const Spec& s, const Chan* chans) {
  int64_t i = begin;
  while (i < end) {
    int64_t c = s.channels == 1 ? 0 : (i / s.inner) % s.channels;
    int64_t run_end = s.channels == 1 ? end : (i / s.inner + 1) * s.inner;
    int64_t n = (run_end < end ? run_end : end) - i;
    const Chan& ch = chans[c];
    if (s.stochastic) {
      loop_generic(x + i, y + i, i, n, s, ch);
    } else if (s.kind == qsim::kFixed) {
      loop_fixed_ne(x + i, y + i, n, ch);
    } else if (s.kind == qsim::kMinifloat) {
      loop_minifloat_ne(x + i, y + i, n, s);
    } else {
      loop_pow2_ne(x + i, y + i, n, ch, s.thr);
    }
    i += n;
  }
}

struct Task {
  const float* x;
  float* y;
  int64_t n;
  Spec spec;
  const Chan* chans;
};

void run_block(void* data, size_t block) {
  const Task* t = static_cast<const Task*>(data);
  int64_t begin = static_cast<int64_t>(block) * kBlock;
  int64_t end = begin + kBlock < t->n ? begin + kBlock : t->n;
  quantize_range(t->x, t->y, begin, end, t->spec, t->chans);
}

// ---- kernel state shared by the CPU and CUDA kernels ---------------------------------------

std::string string_attr(const Ort::ConstKernelInfo& info, const char* name, const char* fallback) {
  try {
    return info.GetAttribute<std::string>(name);
  } catch (const Ort::Exception&) {
    if (fallback == nullptr) throw;
    return fallback;
  }
}

bool int_attr(const Ort::ConstKernelInfo& info, const char* name, int64_t* out) {
  try {
    *out = info.GetAttribute<int64_t>(name);
    return true;
  } catch (const Ort::Exception&) {
    return false;
  }
}

struct KernelBase {
  qsim::Format format;
  uint64_t seed = 0;
  std::atomic<uint64_t> runs{0};

  explicit KernelBase(const OrtKernelInfo* raw) {
    Ort::ConstKernelInfo info(raw);
    std::string text = string_attr(info, "format", nullptr);
    std::string rounding = string_attr(info, "rounding", "nearest_even");
    int64_t axis = 0, seed_attr = 0;
    bool has_axis = int_attr(info, "axis", &axis);
    try {
      format = qsim::parse_format(text, rounding, has_axis, axis);
    } catch (const std::exception& e) {
      throw Ort::Exception(e.what(), ORT_INVALID_ARGUMENT);
    }
    if (int_attr(info, "seed", &seed_attr)) {
      seed = static_cast<uint64_t>(seed_attr);
    } else {
      std::random_device rd;
      seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    }
  }

  // Spec bound to this input's shape, with a fresh run number.
  Spec bind(const std::vector<int64_t>& shape) {
    qsim::Format f = format;
    try {
      qsim::bind_shape(f, shape);
    } catch (const std::exception& e) {
      throw Ort::Exception(e.what(), ORT_INVALID_ARGUMENT);
    }
    f.spec.seed = seed;
    f.spec.run = runs.fetch_add(1);
    return f.spec;
  }
};

struct CpuKernel : KernelBase {
  using KernelBase::KernelBase;

  void Compute(OrtKernelContext* raw) {
    Ort::KernelContext ctx(raw);
    Ort::ConstValue input = ctx.GetInput(0);
    std::vector<int64_t> shape = input.GetTensorTypeAndShapeInfo().GetShape();
    Ort::UnownedValue output = ctx.GetOutput(0, shape);
    int64_t n = static_cast<int64_t>(input.GetTensorTypeAndShapeInfo().GetElementCount());
    if (n == 0) return;
    Task task{input.GetTensorData<float>(), output.GetTensorMutableData<float>(), n, bind(shape),
              format.chans.data()};
    size_t blocks = static_cast<size_t>((n + kBlock - 1) / kBlock);
    if (blocks == 1) {
      run_block(&task, 0);
    } else {
      ctx.ParallelFor(run_block, blocks, 0, &task);
    }
  }
};

struct CpuOp : Ort::CustomOpBase<CpuOp, CpuKernel> {
  void* CreateKernel(const OrtApi& /*api*/, const OrtKernelInfo* info) const { return new CpuKernel(info); }
  const char* GetName() const { return kOpName; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace

#ifdef RISTRETTO_WITH_CUDA
#include "qsim_cuda.h"

namespace {

struct CudaKernel : KernelBase {
  std::mutex mu;
  qsim_cuda::DeviceChans device;  // per-channel parameters on the device, uploaded once

  using KernelBase::KernelBase;

  void Compute(OrtKernelContext* raw) {
    Ort::KernelContext ctx(raw);
    Ort::ConstValue input = ctx.GetInput(0);
    std::vector<int64_t> shape = input.GetTensorTypeAndShapeInfo().GetShape();
    Ort::UnownedValue output = ctx.GetOutput(0, shape);
    int64_t n = static_cast<int64_t>(input.GetTensorTypeAndShapeInfo().GetElementCount());
    if (n == 0) return;
    Spec spec = bind(shape);
    void* stream = ctx.GetGPUComputeStream();
    const Chan* chans = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu);
      chans = device.get(format.chans.data(), format.chans.size(), stream);
    }
    std::string err = qsim_cuda::launch(spec, format.chans[0], chans, input.GetTensorData<float>(),
                                        output.GetTensorMutableData<float>(), n, stream);
    if (!err.empty()) throw Ort::Exception(std::move(err), ORT_RUNTIME_EXCEPTION);
  }
};

struct CudaOp : Ort::CustomOpBase<CudaOp, CudaKernel> {
  void* CreateKernel(const OrtApi& /*api*/, const OrtKernelInfo* info) const { return new CudaKernel(info); }
  const char* GetName() const { return kOpName; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace
#endif

namespace {

std::mutex g_mu;
std::unique_ptr<Ort::CustomOpDomain> g_domain;  // lives as long as the library (sessions need it)
CpuOp g_cpu_op;
#ifdef RISTRETTO_WITH_CUDA
CudaOp g_cuda_op;
#endif

}  // namespace

extern "C" {

// Which kernels this build has: "cpu" or "cpu,cuda" (for `ristretto-onnx kernels`).
__attribute__((visibility("default"))) const char* RistrettoKernelsProviders() {
#ifdef RISTRETTO_WITH_CUDA
  return "cpu,cuda";
#else
  return "cpu";
#endif
}

__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // Older runtime: the first entry of every OrtApi version is CreateStatus.
    const OrtApi* v1 = api_base->GetApi(1);
    return v1 == nullptr ? nullptr
                         : v1->CreateStatus(ORT_FAIL, "ristretto kernels need onnxruntime >= 1.21 (C API 21)");
  }
  Ort::InitApi(api);
  try {
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_domain) {
      g_domain = std::make_unique<Ort::CustomOpDomain>(kDomain);
      g_domain->Add(&g_cpu_op);
#ifdef RISTRETTO_WITH_CUDA
      g_domain->Add(&g_cuda_op);
#endif
    }
    Ort::UnownedSessionOptions(options).Add(*g_domain);
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}

}  // extern "C"
