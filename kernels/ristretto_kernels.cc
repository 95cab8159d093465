// onnxruntime custom-op library for ai.ristretto::QuantizeSim (ristretto-onnx, issue 14).
//
// RegisterCustomOps adds the op to a session: a CPU kernel (vectorized loops, split over
// onnxruntime's intra-op thread pool) and, when built with RISTRETTO_WITH_CUDA, a CUDA kernel
// launched on onnxruntime's compute stream. Both are registered under the same domain and name,
// so a CPU-only session still finds a kernel. Built against the C API of onnxruntime 1.21
// (ORT_API_VERSION 21); GetApi is checked, so older runtimes get an error instead of a crash.
//
// QuantizeSimChain (CPU only): several elementwise steps (formats, Relu, Add) in one pass over
// the tensor; see ChainKernel. Only the project's sessions create it (runtime/kernel_chains.py).
//
// Attributes of QuantizeSim: format (string, required), rounding ("nearest_even" | "stochastic"), axis (int,
// negative, per-channel formats), seed (int, stochastic rounding: the same seed gives the same
// noise sequence run after run of a new session; without it the noise is seeded at random).
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <atomic>
#include <cstdint>
#include <cstring>
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

QSIM_CLONES void loop_ufixed_ne(const float* __restrict x, float* __restrict y, int64_t n, Chan c) {
  for (int64_t i = 0; i < n; ++i) y[i] = qsim::ufixed_ne(x[i], c);
}

QSIM_CLONES void loop_minifloat_ne(const float* __restrict x, float* __restrict y, int64_t n, Spec s) {
  if (s.mf_fast) {
    for (int64_t i = 0; i < n; ++i) y[i] = qsim::minifloat_ne32(x[i], s);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = qsim::minifloat(x[i], s, -1.0);
  }
}

QSIM_CLONES void loop_relu(const float* __restrict x, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] < 0.0f ? 0.0f : x[i];  // as onnxruntime: -0 and NaN pass
}

QSIM_CLONES void loop_add(const float* __restrict x, const float* __restrict r, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] + r[i];
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
    } else if (s.kind == qsim::kUFixed) {
      loop_ufixed_ne(x + i, y + i, n, ch);
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


// ---- QuantizeSimChain: elementwise steps fused into one pass (project sessions, CPU) ---------
//
// Attribute "steps": '|'-separated steps applied in order to each element of input 0: a scalar
// QuantizeSim format (nearest even), "relu" (onnxruntime's Relu: x < 0 gives +0, -0 and NaN
// pass), "add" (+ the element of input 1, which has input 0's shape: onnxruntime's Add without
// broadcasting) or "tee" (the value so far is also written to output 1, for a second reader). Each step is the float32 function of the node it replaces, so the chain gives
// the bits of those nodes run one after the other; runtime/kernel_chains.py builds the chains.

constexpr const char* kChainOpName = "QuantizeSimChain";
constexpr int64_t kTile = 2048;  // elements per step inside a block (stays in L1/L2)

struct ChainStep {
  int op;  // 0 quantize, 1 relu, 2 add, 3 tee
  Spec spec;
  Chan chan;
};

void apply_step(const ChainStep& st, const float* src, const float* r, float* dst, int64_t n) {
  if (st.op == 1) { loop_relu(src, dst, n); return; }
  if (st.op == 2) { loop_add(src, r, dst, n); return; }
  switch (st.spec.kind) {
    case qsim::kFixed: loop_fixed_ne(src, dst, n, st.chan); return;
    case qsim::kUFixed: loop_ufixed_ne(src, dst, n, st.chan); return;
    case qsim::kMinifloat: loop_minifloat_ne(src, dst, n, st.spec); return;
    default: loop_pow2_ne(src, dst, n, st.chan, st.spec.thr); return;
  }
}

struct ChainTask {
  const float* x;
  const float* r;
  float* y;
  float* tee;
  int64_t n;
  const std::vector<ChainStep>* steps;
};

void run_chain_block(void* data, size_t block) {
  const ChainTask* t = static_cast<const ChainTask*>(data);
  int64_t begin = static_cast<int64_t>(block) * kBlock;
  int64_t end = begin + kBlock < t->n ? begin + kBlock : t->n;
  alignas(64) float buf[2][kTile];
  const std::vector<ChainStep>& steps = *t->steps;
  size_t k = steps.size();
  for (int64_t i = begin; i < end; i += kTile) {
    int64_t n = end - i < kTile ? end - i : kTile;
    const float* src = t->x + i;
    int flip = 0;
    for (size_t j = 0; j < k; ++j) {
      if (steps[j].op == 3) {  // tee: never the last step (parse_steps)
        std::memcpy(t->tee + i, src, static_cast<size_t>(n) * sizeof(float));
        continue;
      }
      float* dst = j + 1 == k ? t->y + i : buf[flip];
      flip ^= 1;
      apply_step(steps[j], src, t->r == nullptr ? nullptr : t->r + i, dst, n);
      src = dst;
    }
  }
}

std::vector<ChainStep> parse_steps(const std::string& text, bool* has_add, bool* has_tee) {
  std::vector<ChainStep> steps;
  *has_add = false;
  *has_tee = false;
  size_t start = 0;
  while (true) {
    size_t bar = text.find('|', start);
    std::string item = text.substr(start, bar == std::string::npos ? std::string::npos : bar - start);
    ChainStep st{};
    if (item == "relu") {
      st.op = 1;
    } else if (item == "add") {
      if (*has_add) throw std::invalid_argument("QuantizeSimChain: at most one 'add' step");
      st.op = 2;
      *has_add = true;
    } else if (item == "tee") {
      if (*has_tee) throw std::invalid_argument("QuantizeSimChain: at most one 'tee' step");
      st.op = 3;
      *has_tee = true;
    } else {
      qsim::Format f = qsim::parse_format(item, "nearest_even", false, 0);
      st.op = 0;
      st.spec = f.spec;
      st.chan = f.chans[0];
    }
    steps.push_back(st);
    if (bar == std::string::npos) break;
    start = bar + 1;
  }
  if (steps.back().op == 3) throw std::invalid_argument("QuantizeSimChain: 'tee' cannot be the last step");
  return steps;
}

struct ChainKernel {
  std::vector<ChainStep> steps;
  bool has_add = false;
  bool has_tee = false;

  explicit ChainKernel(const OrtKernelInfo* raw) {
    Ort::ConstKernelInfo info(raw);
    try {
      steps = parse_steps(string_attr(info, "steps", nullptr), &has_add, &has_tee);
    } catch (const std::exception& e) {
      throw Ort::Exception(e.what(), ORT_INVALID_ARGUMENT);
    }
  }

  void Compute(OrtKernelContext* raw) {
    Ort::KernelContext ctx(raw);
    Ort::ConstValue input = ctx.GetInput(0);
    std::vector<int64_t> shape = input.GetTensorTypeAndShapeInfo().GetShape();
    const float* r = nullptr;
    if (has_add) {
      Ort::ConstValue other = ctx.GetInputCount() > 1 ? ctx.GetInput(1) : Ort::ConstValue(nullptr);
      if (!other || other.GetTensorTypeAndShapeInfo().GetShape() != shape)
        throw Ort::Exception("QuantizeSimChain: 'add' needs a second input of the first one's shape",
                             ORT_INVALID_ARGUMENT);
      r = other.GetTensorData<float>();
    }
    Ort::UnownedValue output = ctx.GetOutput(0, shape);
    float* tee = nullptr;
    if (has_tee) {
      if (ctx.GetOutputCount() < 2)
        throw Ort::Exception("QuantizeSimChain: 'tee' needs a second output", ORT_INVALID_ARGUMENT);
      tee = ctx.GetOutput(1, shape).GetTensorMutableData<float>();
    }
    int64_t n = static_cast<int64_t>(input.GetTensorTypeAndShapeInfo().GetElementCount());
    if (n == 0) return;
    ChainTask task{input.GetTensorData<float>(), r, output.GetTensorMutableData<float>(), tee, n, &steps};
    size_t blocks = static_cast<size_t>((n + kBlock - 1) / kBlock);
    if (blocks == 1) {
      run_chain_block(&task, 0);
    } else {
      ctx.ParallelFor(run_chain_block, blocks, 0, &task);
    }
  }
};

struct ChainOp : Ort::CustomOpBase<ChainOp, ChainKernel> {
  void* CreateKernel(const OrtApi& /*api*/, const OrtKernelInfo* info) const { return new ChainKernel(info); }
  const char* GetName() const { return kChainOpName; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
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
ChainOp g_chain_op;
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

// The interface revision of this library: the ops and attributes the Python side may use. Keep in
// step with KERNEL_ABI in runtime/kernels.py (a test compares them); a library without this
// symbol is revision 1 (QuantizeSim only, no ufixed, no QuantizeSimChain).
__attribute__((visibility("default"))) int RistrettoKernelsAbi() { return 2; }

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
      g_domain->Add(&g_chain_op);
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
