"""onnxruntime session factory.

One place decides threads, providers and optimization level, because getting them wrong is the
most common way to make simulation slow: onnxruntime sizes its thread pool from the machine's
cores, not from the CPUs this process may use (a container or ``taskset``), and oversubscribes.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnxruntime as ort

from ristretto_onnx.errors import RistrettoError


def available_cpus() -> int:
    """CPUs this process may run on (affinity mask), not the machine's core count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_providers() -> list[str]:
    """CUDA first when onnxruntime-gpu sees a GPU, then the CPU."""
    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have] or have


def session_options(*, threads: int | None = None, optimize: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or available_cpus()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.log_severity_level = 3  # warnings about unused initializers etc. are noise for users
    return so


def create_session(
    model: onnx.ModelProto | str | Path,
    *,
    providers: list[str] | None = None,
    threads: int | None = None,
    optimize: bool = True,
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """An ``InferenceSession`` for a ModelProto or a path, with sane threads and providers."""
    so = options or session_options(threads=threads, optimize=optimize)
    if isinstance(model, onnx.ModelProto):
        if model.ByteSize() < 2**31 - 1:
            source: str | bytes = model.SerializeToString()
        else:
            raise RistrettoError("model is larger than 2 GB in memory; save it with external data and pass the path")
    else:
        path = Path(model)
        if not path.is_file():
            raise RistrettoError(f"model file not found: {path}")
        source = str(path)
    try:
        return ort.InferenceSession(source, so, providers=providers or default_providers())
    except Exception as e:  # onnxruntime raises its own exception types with multi-line text
        msg = " ".join(str(e).split())
        raise RistrettoError(f"onnxruntime cannot load the model: {msg[:500]}") from e
