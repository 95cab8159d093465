"""The QuantizeSim kernel library in the project's onnxruntime sessions (issue 14).

The library (``kernels/``, built by :mod:`ristretto_onnx.runtime.kernels_build`) registers a CPU
and a CUDA kernel for ``ai.ristretto::QuantizeSim``. onnxruntime resolves a node that has both a
model-local function and a registered kernel in favour of the kernel: before inlining functions
it asks every execution provider which nodes it can run, and a node some provider claims is not
inlined (checked by the tests on the optimized graph). So registering the library is enough to
replace every function body, and nothing in the written model has to change.

A custom op is opaque to onnxruntime, though: it is not constant-folded, so a weight quantizer
would run at every batch and its convolution would lose its constant weights, hence its NCHWc
kernels. :func:`route` therefore quantizes weights (constant input, nearest-even) once in numpy
with the reference quantizer, as the Simulator's lowering does; every other quantizer runs in the
kernel. On the CPU a kernel also cuts onnxruntime's blocked-layout (NCHWc) chains, so project
sessions that use the library run the layout pass (:mod:`ristretto_onnx.runtime.layout`), which
keeps scalar-format QuantizeSim kernels in the blocked layout. Measured on ResNet-20
(``bench/bench_kernels.py``), that beats inlining the fixed-point bodies (standard ops) on the
CPU; the Simulator's own exact lowering of fixed point (QuantizeLinear/DequantizeLinear or
Mul/Clip/Round/Mul, :mod:`ristretto_onnx.runtime.lowering`) is kept, and the kernel runs what it
leaves as QuantizeSim nodes (minifloat, power-of-two, per-channel, stochastic rounding).
On the CPU, :func:`prepare` also fuses runs of quantizers, ReLU and residual Add into one
``QuantizeSimChain`` pass (:mod:`ristretto_onnx.runtime.kernel_chains`).

Every transformation is exact, so results do not depend on whether the library is present: a
session without it runs the function bodies, which equal the same numpy reference bit for bit.

Library lookup: ``RISTRETTO_KERNELS`` (a file, a folder holding the libraries, or ``off``), else
the build folder of the checkout (``build/kernels``). The CUDA variant is preferred when
onnxruntime can run CUDA; it also holds the CPU kernel.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import quantize
from ristretto_onnx.ops import DOMAIN, is_quantize_sim, node_format
from ristretto_onnx.runtime.kernels_build import CPU_LIBRARY, CUDA_LIBRARY, build_dir

ENV = "RISTRETTO_KERNELS"
#: The library interface this code expects (``RistrettoKernelsAbi`` in kernels/ristretto_kernels.cc):
#: 2 = QuantizeSim with ufixed, and QuantizeSimChain. A library from older sources is not used.
KERNEL_ABI = 2
#: Session config key marking options that already carry the library (registering twice fails).
_MARK = "ristretto.kernels_library"


def _disabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("off", "0", "none", "false")


def _cuda_runtime() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def library_path(*, cuda: bool | None = None) -> Path | None:
    """The library the project's sessions use, or ``None`` (not built, or ``RISTRETTO_KERNELS=off``).

    ``cuda=None`` picks the CUDA variant when onnxruntime has the CUDA EP and the variant exists.
    """
    if _disabled():
        return None
    env = os.environ.get(ENV, "").strip()
    want_cuda = _cuda_runtime() if cuda is None else cuda
    if env:
        path = Path(env).expanduser()
        if path.is_file():
            _check_abi(path)
            return path.resolve()
        if not path.is_dir():
            raise RistrettoError(f"{ENV}={env}: no such file or folder")
        folder = path
    else:
        folder = build_dir()
    names = [CUDA_LIBRARY, CPU_LIBRARY] if want_cuda else [CPU_LIBRARY, CUDA_LIBRARY]
    for name in names:
        candidate = folder / name
        if not candidate.is_file():
            continue
        if env:  # named by the user: a stale library is an error, not a silent fallback
            _check_abi(candidate)
            return candidate.resolve()
        if library_abi(str(candidate)) == KERNEL_ABI:
            return candidate.resolve()
    if env:
        raise RistrettoError(f"{ENV}={env}: no {CPU_LIBRARY} or {CUDA_LIBRARY} in that folder")
    return None  # none built, or built from older sources (stale_libraries): the bodies run


@functools.lru_cache(maxsize=8)
def library_abi(path: str) -> int:
    """The interface revision of the library at ``path`` (1 for libraries older than the symbol)."""
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise RistrettoError(f"{path} is not a loadable library: {e}") from None
    fn = getattr(lib, "RistrettoKernelsAbi", None)
    if fn is None:
        return 1
    fn.restype = ctypes.c_int
    return int(fn())


def _check_abi(path: Path) -> None:
    abi = library_abi(str(path))
    if abi != KERNEL_ABI:
        raise RistrettoError(f"{ENV}={path}: the library has kernel interface {abi}, this ristretto-onnx "
                             f"needs {KERNEL_ABI}: rebuild it (ristretto-onnx kernels --build)")


def stale_libraries() -> list[Path]:
    """Libraries in the build folder built from older kernel sources (not used; rebuild them)."""
    if _disabled() or os.environ.get(ENV, "").strip():
        return []
    found = [build_dir() / n for n in (CPU_LIBRARY, CUDA_LIBRARY) if (build_dir() / n).is_file()]
    return [p for p in found if library_abi(str(p)) != KERNEL_ABI]


@functools.lru_cache(maxsize=8)
def library_providers(path: str) -> tuple[str, ...]:
    """The kernels a library holds: ``("cpu",)`` or ``("cpu", "cuda")``."""
    try:
        lib = ctypes.CDLL(path)
        fn = lib.RistrettoKernelsProviders
    except (OSError, AttributeError) as e:
        raise RistrettoError(f"{path} is not a ristretto kernel library: {e}") from None
    fn.restype = ctypes.c_char_p
    return tuple(fn().decode().split(","))


def register(options: ort.SessionOptions, path: Path | None = None) -> Path | None:
    """Register the library in ``options`` (once); returns its path, or ``None`` when absent."""
    try:
        done = options.get_session_config_entry(_MARK)
    except Exception:  # noqa: BLE001 - older onnxruntime raise for a missing key, newer return ""
        done = ""
    if done:
        return Path(done)
    path = path or library_path()
    if path is None:
        return None
    try:
        options.register_custom_ops_library(str(path))
    except Exception as e:  # noqa: BLE001 - onnxruntime's exception types vary by version
        raise RistrettoError(f"onnxruntime cannot load the kernel library {path}: {' '.join(str(e).split())[:300]}") \
            from None
    options.add_session_config_entry(_MARK, str(path))
    return path


# ---------------------------------------------------------------------------------------------
# Routing: which quantizers the kernel runs


def route(model: ModelProto) -> ModelProto | None:
    """A copy of ``model`` prepared for a session with the library (see the module docstring).

    Returns ``None`` when nothing changes. Only the top-level graph is rewritten; quantizers in
    subgraphs run in the kernel.
    """
    nodes = model.graph.node
    if not any(is_quantize_sim(n) for n in nodes):
        return None
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    out = ModelProto()
    out.CopyFrom(model)
    new_nodes: list[NodeProto] = []
    new_inits = []
    changed = False
    for node in out.graph.node:
        if not is_quantize_sim(node):
            new_nodes.append(node)
            continue
        fmt, rounding = node_format(node)
        x = node.input[0]
        if (x in inits and x not in graph_inputs and rounding == "nearest_even"
                and inits[x].data_location != TensorProto.EXTERNAL):  # weights on disk stay there
            q = quantize(numpy_helper.to_array(inits[x]), fmt)
            new_inits.append(numpy_helper.from_array(np.asarray(q, np.float32), node.output[0]))
            changed = True
        else:
            new_nodes.append(node)
    if not changed:
        return None
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    out.graph.initializer.extend(new_inits)
    used = {n.overload for n in _all_nodes(out.graph) if is_quantize_sim(n)}
    keep = [f for f in out.functions if not (f.domain == DOMAIN and f.overload not in used)]
    del out.functions[:]
    out.functions.extend(keep)
    return out


#: Format kinds the kernel library does not implement (their function bodies run instead).
UNSUPPORTED_KINDS: frozenset[str] = frozenset()


def kernel_supports(model: ModelProto) -> bool:
    """Whether the library implements every QuantizeSim format of ``model``."""
    return not any(is_quantize_sim(n) and node_format(n)[0].kind in UNSUPPORTED_KINDS
                   for n in _all_nodes(model.graph))


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == 5 else list(attr.graphs)):
                yield from _all_nodes(g)


def make_sim_node(*args, seed: int | None = None, **kwargs) -> NodeProto:
    """:func:`ristretto_onnx.ops.make_quantize_node` with the kernel's ``seed`` attribute."""
    from ristretto_onnx.ops import make_quantize_node

    node = make_quantize_node(*args, **kwargs)
    if seed is not None:
        node.attribute.append(helper.make_attribute("seed", int(seed)))
    return node


def prepare(source: str | bytes, options: ort.SessionOptions, providers: list[str]) -> tuple[str | bytes, bool]:
    """Register the library in ``options`` when it suits ``providers``: (model source, kernels used).

    ``kernels used`` is true when QuantizeSim nodes are left for the kernel after routing.

    A CPU-only library is not registered for a CUDA session: its kernel would pull every
    quantizer back to the CPU, and the function bodies run on the GPU.
    """
    import onnx

    path = library_path()
    if path is None:
        return source, False
    first = providers[0] if providers else None  # a name or (name, options); session imports us
    on_cuda = (first[0] if isinstance(first, tuple) else first) == "CUDAExecutionProvider"
    if on_cuda and "cuda" not in library_providers(str(path)):
        return source, False
    try:
        model = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(source)
    except Exception:  # noqa: BLE001 - unreadable models fail with onnxruntime's own message later
        register(options, path)
        return source, False
    if not kernel_supports(model):
        return source, False  # the function bodies run every quantizer (exact all the same)
    register(options, path)
    routed = route(model)
    out = routed or model
    used = any(is_quantize_sim(n) for n in out.graph.node)
    if used:
        # A custom op has no shape inference in onnxruntime: without the shapes of its outputs
        # (value_info, inferred here through the function bodies) onnxruntime fuses and lays out
        # the layers after it differently than around a function body, which changes the float
        # rounding of those layers. With them the graph, and the bits, are the same.
        try:
            out = onnx.shape_inference.infer_shapes(out, strict_mode=False)
        except Exception:  # noqa: BLE001 - no shapes only costs speed and ulp-level equality
            pass
        if not on_cuda:  # runs of quantizers, ReLU and residual Add in one pass (kernel_chains)
            from ristretto_onnx.runtime.kernel_chains import fuse_chains

            out = fuse_chains(out) or out
    if not used and routed is None:
        return source, used
    try:
        return out.SerializeToString(), used
    except ValueError:  # over 2 GB: the file as it is (weights then run in the kernel too)
        return source, True
