"""onnxruntime session factory.

One place decides threads, providers and optimization level, because getting them wrong is the
most common way to make simulation slow: onnxruntime sizes its thread pool from the machine's
cores, not from the CPUs this process may use (a container or ``taskset``), and oversubscribes.

Two session options matter for simulated models in particular:

* ``session.disable_quant_qdq``: onnxruntime otherwise fuses QuantizeLinear/DequantizeLinear
  pairs around a Conv into an integer ``QLinearConv``, whose arithmetic differs from the float
  simulation. We never want that here, so it is always set.
* graph optimizations stay at ``ORT_ENABLE_ALL``: on x86 that includes the NCHWc convolution
  layout, which is about 4x faster than plain NCHW for ResNet-20 on this CPU (measured
  2,560 vs 604 images/s with ``ORT_ENABLE_EXTENDED``).

:func:`create_session` optionally goes one step further (``blocked_layout=True``): it lets
onnxruntime optimize the model, then keeps elementwise ops in the NCHWc layout
(:mod:`ristretto_onnx.runtime.layout`) and loads the result without optimizing again. That
removes the layout conversions onnxruntime puts around every ``Round``, which otherwise cost
about 10 % of a simulated ResNet-20's run time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from ristretto_onnx.errors import RistrettoError

_TWO_GB = 2**31 - 1


def available_cpus() -> int:
    """CPUs this process may run on (affinity mask), not the machine's core count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def gpu_available() -> bool:
    """True when onnxruntime-gpu is installed *and* can see a CUDA device.

    ``get_available_providers()`` lists CUDA whenever the GPU wheel is installed, even on a
    machine without a GPU (session creation then fails), so we also ask the driver.
    """
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        get_count = getattr(ort.capi._pybind_state, "get_cuda_device_count", None)
        return bool(get_count()) if get_count is not None else True
    except Exception:  # noqa: BLE001 - any failure to ask means "no usable GPU"
        return False


#: CUDA EP options of every project session. ``use_tf32=0``: Conv/MatMul in IEEE float32, as on
#: the CPU. TF32 (onnxruntime's default) is exact only for operands of <= 11 significant bits;
#: measured on an H200 (onnxruntime-gpu 1.31.1, ResNet-20, 2,000 CIFAR-10 images): dfp-8 outputs
#: equal the CPU's bit for bit with TF32 on or off, FP32 outputs differ from the CPU's by up to
#: 0.026 with TF32 and 1.9e-5 without (cuDNN's summation order), top-1 identical either way.
#: cuDNN's exhaustive algorithm search stays on (1.8x faster than DEFAULT there).
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}


def provider_name(provider) -> str:
    """``"CUDAExecutionProvider"`` for both ``"CUDAExecutionProvider"`` and ``(name, options)``."""
    return provider[0] if isinstance(provider, tuple) else provider


def default_providers() -> list:
    """CUDA first (with :data:`CUDA_OPTIONS`) when onnxruntime-gpu sees a GPU, then the CPU."""
    providers = [("CUDAExecutionProvider", dict(CUDA_OPTIONS))] if gpu_available() else []
    return providers + ["CPUExecutionProvider"]


def session_options(
    *,
    threads: int | None = None,
    optimize: bool = True,
    spinning: bool = False,
) -> ort.SessionOptions:
    """Options every session of the project uses (see the module docstring).

    Worker threads do not spin (busy-wait) between ops by default. On ResNet-20 (2 CPUs,
    bench/bench_runtime.py) spinning gained about 2 % wall time for about 40 % more CPU time,
    and a spinning session keeps a CPU busy after its run, slowing whatever runs next (another
    session, the data loader, other processes on a shared machine).
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or available_cpus()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.log_severity_level = 3  # warnings about unused initializers etc. are noise for users
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _source(model: onnx.ModelProto | str | Path) -> str | bytes:
    if isinstance(model, onnx.ModelProto):
        if model.ByteSize() >= _TWO_GB:
            raise RistrettoError("model is larger than 2 GB in memory; save it with external data and pass the path")
        return model.SerializeToString()
    path = Path(model)
    if not path.is_file():
        raise RistrettoError(f"model file not found: {path}")
    return str(path)


def _new_session(source: str | bytes, so: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(source, so, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types with multi-line text
        msg = " ".join(str(e).split())
        raise RistrettoError(f"onnxruntime cannot load the model: {msg[:500]}") from e


def create_session(
    model: onnx.ModelProto | str | Path,
    *,
    providers: list[str] | None = None,
    threads: int | None = None,
    optimize: bool = True,
    options: ort.SessionOptions | None = None,
    blocked_layout: bool = False,
    spinning: bool = False,
    kernels: bool = True,
) -> ort.InferenceSession:
    """An ``InferenceSession`` for a ModelProto or a path, with sane threads and providers.

    ``blocked_layout=True`` (CPU only, ignored otherwise) runs the NCHWc layout pass described in
    the module docstring; if anything about it fails, the plain optimized session is returned,
    so it is always safe to ask for. ``kernels=False`` keeps the QuantizeSim kernel library out
    (function bodies only; see :mod:`ristretto_onnx.runtime.kernels`).
    """
    providers = providers or default_providers()
    so = options or session_options(threads=threads, optimize=optimize, spinning=spinning)
    light = False
    if isinstance(model, onnx.ModelProto):
        from ristretto_onnx.passes.external import has_external, session_folder_entry
        from ristretto_onnx.passes.save import needs_external_data, save_model

        if has_external(model):
            # Weights left on disk by load_model: onnxruntime reads them from their file, and
            # packs no second copy of them.
            session_folder_entry(so)
            so.add_session_config_entry("session.disable_prepacking", "1")
            light = True  # no NCHWc pass: its optimized-model file would inline every weight
        elif needs_external_data(model):  # over 2 GB: through a file with external data
            with tempfile.TemporaryDirectory(prefix="ristretto-session-") as tmp:
                path = Path(tmp) / "model.onnx"
                save_model(model, path, external_data=True)
                return create_session(path, providers=providers, threads=threads, optimize=optimize,
                                      options=so, blocked_layout=blocked_layout, spinning=spinning)
    source = _source(model)
    if kernels:  # the QuantizeSim kernel library, when built (runtime/kernels.py)
        from ristretto_onnx.runtime.kernels import prepare

        source, used = prepare(source, so, providers)
        # keep the kernels inside NCHWc chains (the pass re-sets the options' optimized model path)
        blocked_layout = blocked_layout or (used and options is None)
    if blocked_layout and not light and optimize and providers == ["CPUExecutionProvider"]:
        session = _blocked_layout_session(source, so, providers)
        if session is not None:
            return session
    return _new_session(source, so, providers)


def optimized_model(
    model: onnx.ModelProto | str | Path,
    options: ort.SessionOptions | None = None,
    providers: list[str] | None = None,
) -> onnx.ModelProto:
    """The graph onnxruntime actually runs, after its optimizations (for inspection and tests).

    Weight quantizers should be gone from it: their inputs are constants, so onnxruntime folds
    them at session creation.
    """
    so = options or session_options()
    with tempfile.TemporaryDirectory(prefix="ristretto-ort-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        so.optimized_model_filepath = path
        _new_session(_source(model), so, providers or ["CPUExecutionProvider"])
        so.optimized_model_filepath = ""
        return onnx.load(path)


def _blocked_layout_session(source: str | bytes, so: ort.SessionOptions,
                            providers: list[str]) -> ort.InferenceSession | None:
    """Optimize with onnxruntime, apply the NCHWc layout pass, load without re-optimizing.

    Returns the first (plain optimized) session when the pass finds nothing to change, and
    ``None`` when something unexpected happens (the caller then builds a plain session).
    """
    from ristretto_onnx.runtime.layout import keep_blocked_layout, static_shapes

    with tempfile.TemporaryDirectory(prefix="ristretto-ort-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        so.optimized_model_filepath = path
        try:
            first = _new_session(source, so, providers)
        finally:
            so.optimized_model_filepath = ""
        try:
            optimized = onnx.load(path)
            original = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(source)
        except Exception:  # noqa: BLE001 - e.g. external data we did not expect
            return first
    changed = keep_blocked_layout(optimized, static_shapes(original))
    if changed is None:
        return first
    level = so.graph_optimization_level
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(changed.SerializeToString(), so, providers=providers)
    except Exception:  # noqa: BLE001 - the layout pass is an optimization; never fail because of it
        return first
    finally:
        so.graph_optimization_level = level
