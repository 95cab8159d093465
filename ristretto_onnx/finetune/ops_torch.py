"""ONNX operators as torch functions: the CNN op set the passes support, one builder per op.

Each builder receives the node, its attributes and the values of its *static* inputs (shapes,
pads, slice bounds: known when the model is converted) and returns a function of the node's
runtime inputs. Semantics follow the ONNX operator specification (opset 13 and later; every
simulated model has opset >= 13); the tests compare each op with onnxruntime.

Why not onnx2torch/onnx2pytorch: they fail on opset >= 19 and import torchvision at import time
(issue 12); the op set a quantized CNN needs is small.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from onnx import NodeProto

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.finetune.torch_dep import require_torch

torch = require_torch()
F = torch.nn.functional

Static = Mapping[str, np.ndarray]
Builder = Callable[[NodeProto, dict, Static], Callable]


def _static(node: NodeProto, static: Static, i: int, what: str) -> np.ndarray | None:
    if i >= len(node.input) or not node.input[i]:
        return None
    name = node.input[i]
    if name not in static:
        raise RistrettoError(f"{node.op_type} node {node.name or node.output[0]!r}: input {what} "
                             f"({name!r}) must be a constant to fine-tune this model")
    return static[name]


def _ints(v, default=None) -> list[int] | None:
    return default if v is None else [int(a) for a in v]


def _nd(x) -> int:
    return x.dim() - 2  # spatial dimensions of an NC... tensor


def _torch_pads(pads: Sequence[int]) -> list[int]:
    """ONNX [b1, b2, .., e1, e2, ..] (first axis first) -> torch F.pad (last axis first)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [int(pads[i]), int(pads[i + n])]
    return out


def _same_pads(x, kernel, strides, dilations, upper: bool) -> list[int]:
    spatial = x.shape[2:]
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = math.ceil(size / s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begins.append(small if upper else big)
        ends.append(big if upper else small)
    return begins + ends


def _resolve_pads(node, attrs, x, kernel, strides, dilations) -> list[int]:
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    n = len(kernel)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(x, kernel, strides, dilations, auto == "SAME_UPPER")
    if auto == "VALID":
        return [0] * (2 * n)
    return _ints(attrs.get("pads"), [0] * (2 * n))


def _symmetric(pads: Sequence[int]) -> tuple[bool, list[int]]:
    n = len(pads) // 2
    return all(pads[i] == pads[i + n] for i in range(n)), list(pads[:n])


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def conv(node, attrs, static):
    group = int(attrs.get("group", 1))

    def run(x, w, b=None):
        k = list(w.shape[2:])
        nd = len(k)
        strides = _ints(attrs.get("strides"), [1] * nd)
        dil = _ints(attrs.get("dilations"), [1] * nd)
        pads = _resolve_pads(node, attrs, x, k, strides, dil)
        sym, half = _symmetric(pads)
        if not sym:
            x, half = F.pad(x, _torch_pads(pads)), [0] * nd
        return _CONV[nd](x, w, b, strides, half, dil, group)

    return run


def conv_transpose(node, attrs, static):
    group = int(attrs.get("group", 1))
    if "output_shape" in attrs:
        raise RistrettoError(f"ConvTranspose node {node.name!r}: the output_shape attribute is not supported")
    auto = attrs.get("auto_pad", b"NOTSET")
    if (auto.decode() if isinstance(auto, bytes) else auto) not in ("NOTSET", "VALID"):
        raise RistrettoError(f"ConvTranspose node {node.name!r}: auto_pad {auto!r} is not supported")

    def run(x, w, b=None):
        nd = w.dim() - 2
        strides = _ints(attrs.get("strides"), [1] * nd)
        dil = _ints(attrs.get("dilations"), [1] * nd)
        outpad = _ints(attrs.get("output_padding"), [0] * nd)
        pads = _ints(attrs.get("pads"), [0] * (2 * nd))
        y = _CONVT[nd](x, w, b, strides, 0, outpad, group, dil)
        index = [slice(None), slice(None)]
        for i in range(nd):
            index.append(slice(pads[i], y.shape[2 + i] - pads[i + nd]))
        return y[tuple(index)]

    return run


def gemm(node, attrs, static):
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    ta, tb = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))

    def run(a, b, c=None):
        a = a.t() if ta else a
        b = b.t() if tb else b
        y = a @ b
        if alpha != 1.0:
            y = y * alpha
        if c is not None:
            y = y + (c if beta == 1.0 else beta * c)
        return y

    return run


def max_pool(node, attrs, static):
    if len(node.output) > 1 and node.output[1]:
        raise RistrettoError(f"MaxPool node {node.name!r}: the Indices output is not supported")
    kernel = _ints(attrs["kernel_shape"])
    nd = len(kernel)
    strides = _ints(attrs.get("strides"), [1] * nd)
    dil = _ints(attrs.get("dilations"), [1] * nd)
    ceil = bool(attrs.get("ceil_mode", 0))

    def run(x):
        pads = _resolve_pads(node, attrs, x, kernel, strides, dil)
        sym, half = _symmetric(pads)
        if not sym or any(2 * p > k for p, k in zip(half, kernel)):
            x, half = F.pad(x, _torch_pads(pads), value=-math.inf), [0] * nd
        return _MAXPOOL[nd](x, kernel, strides, half, dil, ceil_mode=ceil)

    return run


def average_pool(node, attrs, static):
    kernel = _ints(attrs["kernel_shape"])
    nd = len(kernel)
    strides = _ints(attrs.get("strides"), [1] * nd)
    if any(d != 1 for d in _ints(attrs.get("dilations"), [1] * nd)):
        raise RistrettoError(f"AveragePool node {node.name!r}: dilations are not supported")
    ceil = bool(attrs.get("ceil_mode", 0))
    include = bool(attrs.get("count_include_pad", 0))

    def run(x):
        pads = _resolve_pads(node, attrs, x, kernel, strides, [1] * nd)
        sym, half = _symmetric(pads)
        pool = _AVGPOOL[nd]
        if sym and all(2 * p <= k for p, k in zip(half, kernel)) and not (ceil and any(half)):
            return pool(x, kernel, strides, half, ceil_mode=ceil, count_include_pad=include)
        # General case: sum over the window / number of counted elements.
        tp = _torch_pads(pads)
        xs = pool(F.pad(x, tp), kernel, strides, 0, ceil_mode=ceil, count_include_pad=True,
                  divisor_override=1)
        mask = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        mask = F.pad(mask, tp, value=1.0 if include else 0.0)
        count = pool(mask, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True, divisor_override=1)
        return xs / count

    return run


def global_average_pool(node, attrs, static):
    return lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def global_max_pool(node, attrs, static):
    return lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


def batch_normalization(node, attrs, static):
    """Inference-mode BatchNormalization, folded to one per-channel scale and shift."""
    if int(attrs.get("training_mode", 0)):
        raise RistrettoError(f"BatchNormalization node {node.name!r} is in training mode")
    eps = float(attrs.get("epsilon", 1e-5))
    scale, bias, mean, var = (np.asarray(_static(node, static, i, w), np.float64)
                              for i, w in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))
    a = scale / np.sqrt(var + eps)
    a32, b32 = a.astype(np.float32), (bias - mean * a).astype(np.float32)
    cache: dict = {}

    def run(x, *_):
        key = x.device
        if key not in cache:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            cache[key] = (torch.as_tensor(a32, device=x.device).reshape(shape),
                          torch.as_tensor(b32, device=x.device).reshape(shape))
        sa, sb = cache[key]
        return x * sa + sb

    return run


def clip(node, attrs, static):
    lo = _static(node, static, 1, "min")
    hi = _static(node, static, 2, "max")
    lo = float(lo) if lo is not None else attrs.get("min")
    hi = float(hi) if hi is not None else attrs.get("max")
    return lambda x, *_: torch.clamp(x, lo, hi)


def leaky_relu(node, attrs, static):
    alpha = float(attrs.get("alpha", 0.01))
    return lambda x: F.leaky_relu(x, alpha)


def concat(node, attrs, static):
    axis = int(attrs["axis"])
    return lambda *xs: torch.cat([x for x in xs if x is not None], dim=axis)


def flatten(node, attrs, static):
    axis = int(attrs.get("axis", 1))

    def run(x):
        a = axis + x.dim() if axis < 0 else axis
        return x.reshape(int(np.prod(x.shape[:a], dtype=np.int64)), -1)

    return run


def reshape(node, attrs, static):
    shape = [int(s) for s in _static(node, static, 1, "shape")]
    allowzero = int(attrs.get("allowzero", 0))

    def run(x, *_):
        target = [x.shape[i] if (s == 0 and not allowzero) else s for i, s in enumerate(shape)]
        return x.reshape(target)

    return run


def pad(node, attrs, static):
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = [int(p) for p in _static(node, static, 1, "pads")]
    value = _static(node, static, 2, "constant_value")
    value = 0.0 if value is None or np.size(value) == 0 else float(np.asarray(value).ravel()[0])
    axes = _static(node, static, 3, "axes")
    if any(p < 0 for p in pads) and mode != "constant":
        raise RistrettoError(f"Pad node {node.name!r}: negative pads need mode constant")
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        raise RistrettoError(f"Pad node {node.name!r}: mode {mode!r} is not supported")

    def run(x, *_):
        r = x.dim()
        full = [0] * (2 * r)
        ax = [int(a) % r for a in axes] if axes is not None else list(range(r))
        n = len(ax)
        for j, a in enumerate(ax):
            full[a], full[a + r] = pads[j], pads[j + n]
        tp = _torch_pads(full)
        while len(tp) > 2 and tp[-1] == 0 and tp[-2] == 0:
            tp = tp[:-2]  # torch pads the last dimensions; drop leading unpadded ones
        if torch_mode == "constant":
            return F.pad(x, tp, value=value)
        return F.pad(x, tp, mode=torch_mode)

    return run


def slice_(node, attrs, static):
    starts = _static(node, static, 1, "starts")
    ends = _static(node, static, 2, "ends")
    axes = _static(node, static, 3, "axes")
    steps = _static(node, static, 4, "steps")
    if steps is not None and any(int(s) <= 0 for s in steps):
        raise RistrettoError(f"Slice node {node.name!r}: only positive steps are supported")

    def run(x, *_):
        index = [slice(None)] * x.dim()
        ax = axes if axes is not None else range(len(starts))
        for j, a in enumerate(ax):
            a = int(a) % x.dim()
            size = x.shape[a]
            s, e = int(starts[j]), int(ends[j])
            s = max(0, min(size, s + size if s < 0 else s))
            e = max(0, min(size, e + size if e < 0 else e))
            index[a] = slice(s, e, int(steps[j]) if steps is not None else 1)
        return x[tuple(index)]

    return run


def softmax(node, attrs, static):
    axis = int(attrs.get("axis", -1))
    return lambda x: torch.softmax(x, dim=axis)


def log_softmax(node, attrs, static):
    axis = int(attrs.get("axis", -1))
    return lambda x: torch.log_softmax(x, dim=axis)


def transpose(node, attrs, static):
    perm = _ints(attrs.get("perm"))
    return lambda x: x.permute(perm if perm is not None else list(reversed(range(x.dim()))))


def squeeze(node, attrs, static):
    axes = _static(node, static, 1, "axes")
    axes = [int(a) for a in axes] if axes is not None else _ints(attrs.get("axes"))

    def run(x, *_):
        if axes is None:
            return x.squeeze()
        return x.squeeze(tuple(a % x.dim() for a in axes))

    return run


def unsqueeze(node, attrs, static):
    axes = [int(a) for a in _static(node, static, 1, "axes")]

    def run(x, *_):
        out_rank = x.dim() + len(axes)
        for a in sorted(a % out_rank for a in axes):
            x = x.unsqueeze(a)
        return x

    return run


def _elementwise(fn):
    return lambda node, attrs, static: fn


BUILDERS: dict[str, Builder] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": _elementwise(torch.matmul),
    "Relu": _elementwise(torch.relu),
    "Clip": clip,
    "LeakyRelu": leaky_relu,
    "Sigmoid": _elementwise(torch.sigmoid),
    "Tanh": _elementwise(torch.tanh),
    "MaxPool": max_pool,
    "AveragePool": average_pool,
    "GlobalAveragePool": global_average_pool,
    "GlobalMaxPool": global_max_pool,
    "Add": _elementwise(torch.add),
    "Sub": _elementwise(torch.sub),
    "Mul": _elementwise(torch.mul),
    "Div": _elementwise(torch.div),
    "Concat": concat,
    "Flatten": flatten,
    "Reshape": reshape,
    "Pad": pad,
    "Slice": slice_,
    "Softmax": softmax,
    "LogSoftmax": log_softmax,
    "BatchNormalization": batch_normalization,
    "Transpose": transpose,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Identity": _elementwise(lambda x: x),
    "Dropout": _elementwise(lambda x, *_: x),  # inference semantics; the trainer adds no dropout
}

#: Inputs that are attributes in disguise (read at conversion time, never at run time).
STATIC_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Pad": (1, 2, 3), "Slice": (1, 2, 3, 4), "Clip": (1, 2), "Squeeze": (1,),
    "Unsqueeze": (1,), "BatchNormalization": (1, 2, 3, 4), "Dropout": (1, 2),
}
