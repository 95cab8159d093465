"""The ``QuantizeSim`` op (domain ``ai.ristretto``, version 1) and its standard-op function bodies.

A ``QuantizeSim`` node has one float input ``X`` and one output ``Y`` of the same shape; its string
attribute ``format`` holds a format's string form (``fixed:8:4``, ``minifloat:8:5``,
``pow2:-8:-1``, ``ufixed:8:4``) and ``rounding`` is ``nearest_even`` (default) or ``stochastic``.

So that a plain ``onnxruntime.InferenceSession`` runs an annotated model with nothing else
installed, every model carries one ONNX function per distinct (format, rounding) pair, built from
standard ops. ONNX identifies a function by (domain, name, overload), so each node names its
function through the ``overload`` field (IR version >= 10). The bodies reproduce the numpy
reference in :mod:`ristretto_onnx.formats` bit for bit on float32:

* scaling by powers of two is exact in float32, ``Round`` is round-half-to-even;
* where a format needs ``floor(log2|x|)`` (minifloat, pow2), ``Log`` gives an estimate that may be
  one off near a binade boundary; it is corrected by exact comparisons against powers of two that
  come from a constant table through ``Gather`` (never from ``Pow``, whose exactness is not
  guaranteed by the standard);
* indices are clamped as integers before ``Gather``, so NaN and infinities cannot index out of
  range. NaN inputs give NaN outputs, as in the reference.

Weight quantizers have constant inputs, so onnxruntime folds them away at session creation.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
import onnx
from onnx import FunctionProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import ROUNDINGS, Fixed, Format, Minifloat, PerChannel, Pow2, UFixed, parse_format

DOMAIN = "ai.ristretto"
OP_TYPE = "QuantizeSim"
OP_VERSION = 1
#: The standard-op bodies use integer Clip and GreaterOrEqual (opset 12) and tensor-input Clip.
MIN_OPSET = 13
#: Function overloads need IR version 10; onnxruntime 1.31 reads at most 13.
MIN_IR_VERSION = 10

_INV_LN2 = 1.0 / math.log(2.0)


def overload_name(fmt: Format | str, rounding: str = "nearest_even") -> str:
    """The function overload that implements ``fmt`` with ``rounding``: ``fixed_8_m2_ne``."""
    fmt = parse_format(fmt)
    suffix = "ne" if rounding == "nearest_even" else "sr"
    if isinstance(fmt, PerChannel):  # hundreds of channels: name the body by a digest
        digest = hashlib.sha1(str(fmt).encode()).hexdigest()[:12]
        return f"pc_{fmt.base_kind}_{fmt.bits}_ax{str(fmt.axis).replace('-', 'm')}_{digest}_{suffix}"
    body = re.sub(r"[^0-9a-z]+", "_", str(fmt).replace("-", "m"))
    return f"{body}_{suffix}"


def is_quantize_sim(node: NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == OP_TYPE


def node_format(node: NodeProto) -> tuple[Format, str]:
    """The (format, rounding) of a ``QuantizeSim`` node, validated."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if "format" not in attrs:
        raise RistrettoError(f"QuantizeSim node {node.name!r} has no 'format' attribute")
    fmt = parse_format(_text(attrs["format"]), axis=attrs.get("axis"))
    rounding = _text(attrs.get("rounding", b"nearest_even"))
    if rounding not in ROUNDINGS:
        raise RistrettoError(f"QuantizeSim node {node.name!r}: unknown rounding {rounding!r}")
    return fmt, rounding


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def make_quantize_node(
    input: str,
    output: str,
    fmt: Format | str,
    *,
    rounding: str = "nearest_even",
    name: str | None = None,
    rank: int | None = None,
) -> NodeProto:
    """A ``QuantizeSim`` node for ``fmt``, already pointing at its function overload.

    A per-channel format gets an ``axis`` attribute, stored negative (counted from the end) so
    that the function body can broadcast its per-channel constants without knowing the rank;
    pass ``rank`` when the format's axis is non-negative.
    """
    fmt = parse_format(fmt)
    if rounding not in ROUNDINGS:
        raise RistrettoError(f"unknown rounding {rounding!r}")
    if isinstance(fmt, PerChannel):
        fmt = _negative_axis(fmt, rank)
        node = helper.make_node(
            OP_TYPE, [input], [output], name=name or f"{output}_qsim", domain=DOMAIN,
            format=fmt.format_text(), rounding=rounding, axis=fmt.axis,
        )
    else:
        node = helper.make_node(
            OP_TYPE, [input], [output], name=name or f"{output}_qsim", domain=DOMAIN,
            format=str(fmt), rounding=rounding,
        )
    node.overload = overload_name(fmt, rounding)
    return node


def _negative_axis(fmt: PerChannel, rank: int | None) -> PerChannel:
    if fmt.axis < 0:
        return fmt
    if rank is None:
        raise RistrettoError(f"per-channel format {fmt} has a non-negative axis: the tensor's rank is needed")
    if fmt.axis >= rank:
        raise RistrettoError(f"axis {fmt.axis} is out of range for a tensor of rank {rank}")
    return PerChannel(fmt.formats, fmt.axis - rank)


# ---------------------------------------------------------------------------------------------
# Function bodies


class _Body:
    """Collects the nodes of one function body with fresh internal names."""

    def __init__(self) -> None:
        self.nodes: list[NodeProto] = []
        self._n = 0

    def const(self, value, dtype=np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self._fresh("c")
        self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name)))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self._fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def _fresh(self, stem: str) -> str:
        self._n += 1
        return f"_{stem}{self._n}"


def _round(b: _Body, v: str, rounding: str) -> str:
    if rounding == "nearest_even":
        return b.op("Round", v)
    noise = b.op("RandomUniformLike", v, dtype=TensorProto.FLOAT)
    return b.op("Floor", b.op("Add", v, noise))


def _floor_log2_index(b: _Body, a: str, lo: int, hi: int, pow_table: str) -> str:
    """int64 index ``i`` with ``lo + i = clip(floor(log2 a), lo, hi)``, exact.

    ``Log`` estimates the exponent (possibly one off at a binade edge); one comparison each way
    against exact powers of two from ``pow_table`` (``pow_table[i] = 2**(lo + i)``) corrects it.
    """
    n = hi - lo
    est = b.op("Floor", b.op("Mul", b.op("Log", a), b.const(_INV_LN2)))
    est = b.op("Clip", est, b.const(float(lo)), b.const(float(hi)))
    idx = b.op("Cast", b.op("Sub", est, b.const(float(lo))), to=TensorProto.INT64)
    zero, top = b.const(0, np.int64), b.const(n, np.int64)
    idx = b.op("Clip", idx, zero, top)  # NaN casts to an arbitrary integer: keep it in range
    p = b.op("Gather", pow_table, idx)
    up = b.op("Cast", b.op("GreaterOrEqual", a, b.op("Mul", p, b.const(2.0))), to=TensorProto.INT64)
    down = b.op("Cast", b.op("Less", a, p), to=TensorProto.INT64)
    return b.op("Clip", b.op("Sub", b.op("Add", idx, up), down), zero, top)


def _channel_shape(fmt: PerChannel) -> tuple[int, ...]:
    """Shape that broadcasts per-channel constants along the (negative) axis."""
    return (fmt.channels,) + (1,) * (-fmt.axis - 1)


def _fixed_body(b: _Body, fmt: Fixed | PerChannel, rounding: str) -> None:
    if isinstance(fmt, PerChannel):
        bits, frac = fmt.formats[0].bits, fmt.params()[1].reshape(_channel_shape(fmt))
    else:
        bits, frac = fmt.bits, np.asarray(fmt.frac_bits)
    v = b.op("Mul", "X", b.const(np.ldexp(1.0, frac)))
    # Clip before rounding: exact (integer bounds, rounding is monotonic and keeps integers; NaN
    # passes both), and onnxruntime fuses a Clip that follows a convolution (whose scale Mul it
    # folds into the weights) into the convolution, one pass over the tensor less.
    lo, hi = b.const(-(2.0 ** (bits - 1))), b.const(2.0 ** (bits - 1) - 1)
    if rounding == "nearest_even":
        k = b.op("Round", b.op("Clip", v, lo, hi))
    else:
        k = b.op("Clip", _round(b, v, rounding), lo, hi)
    b.op("Mul", k, b.const(np.ldexp(1.0, -frac)), out="Y")


#: Lower clip bound of the nearest-even ufixed body: any c in (0, 1/2) rounds to +0.
UFIXED_CLIP_MIN = 0.25


def _ufixed_body(b: _Body, fmt: UFixed, rounding: str) -> None:
    v = b.op("Mul", "X", b.const(np.ldexp(1.0, fmt.frac_bits)))
    hi = b.const(2.0**fmt.bits - 1)
    if rounding == "nearest_even":
        # The signed body's form (Mul, Clip, Round, Mul), which onnxruntime folds into the
        # convolution before it (scale into the weights, Clip as its fused activation), with the
        # lower bound 1/4 instead of 0: exact for every input. v < 1/4 (negatives, -0, +0 and
        # [0, 1/4)) clips to 1/4 and Round gives +0, as the reference's clip(rne(v), 0, hi) + 0
        # does for every v < 1/2; v in [1/4, 1/2] rounds to +0 in both; above, both round the
        # same v and clip at the integer hi (rounding is monotonic and keeps integers); NaN
        # passes Clip and Round. A bound of 0 would let -0 through as -0 (Clip compares, and
        # -0 < 0 is false), and 1/2 would depend on ties: 1/4 needs neither an Abs nor a Max.
        k = b.op("Round", b.op("Clip", v, b.const(UFIXED_CLIP_MIN), hi))
    else:
        k = b.op("Clip", _round(b, v, rounding), b.const(0.0), hi)
        k = b.op("Abs", k)  # -0 (a small negative rounded) becomes +0, as in the reference
    b.op("Mul", k, b.const(np.ldexp(1.0, -fmt.frac_bits)), out="Y")


def _minifloat_body(b: _Body, fmt: Minifloat, rounding: str) -> None:
    exps = np.arange(fmt.emin, fmt.emax + 1)
    m = fmt.mant_bits
    a = b.op("Abs", "X")
    i = _floor_log2_index(b, a, fmt.emin, fmt.emax, b.const(np.ldexp(1.0, exps)))
    inv = b.op("Gather", b.const(np.ldexp(1.0, m - exps)), i)
    step = b.op("Gather", b.const(np.ldexp(1.0, exps - m)), i)
    q = b.op("Mul", _round(b, b.op("Mul", "X", inv), rounding), step)
    q = b.op("Clip", q, b.const(-fmt.max_value), b.const(fmt.max_value))
    normal = b.op("GreaterOrEqual", b.op("Abs", q), b.const(fmt.smallest_positive))
    b.op("Mul", q, b.op("Cast", normal, to=TensorProto.FLOAT), out="Y")  # flush, keeping the sign


def _sqrt2_thresholds(exps: np.ndarray) -> np.ndarray:
    """Smallest float32 >= sqrt(2) * 2**e: for float32 ``a``, ``a >= t`` iff ``log2 a >= e + 1/2``."""
    exact = np.sqrt(2.0) * np.ldexp(1.0, exps)
    t = exact.astype(np.float32)
    below = t.astype(np.float64) < exact
    t[below] = np.nextafter(t[below], np.float32(np.inf))
    return t


def _pow2_body(b: _Body, fmt: Pow2 | PerChannel, rounding: str) -> None:
    emins, emaxs = (np.array([fmt.exp_min]), np.array([fmt.exp_max])) if isinstance(fmt, Pow2) else fmt.params()
    lo, hi = int(emins.min()) - 1, int(emaxs.max())
    exps = np.arange(lo, hi + 1)
    a = b.op("Abs", "X")
    pow_table = b.const(np.ldexp(1.0, exps))
    f = _floor_log2_index(b, a, lo, hi, pow_table)
    if rounding == "nearest_even":
        up = b.op("GreaterOrEqual", a, b.op("Gather", b.const(_sqrt2_thresholds(exps)), f))
    else:
        frac = b.op("Sub", b.op("Div", a, b.op("Gather", pow_table, f)), b.const(1.0))
        up = b.op("Less", b.op("RandomUniformLike", a, dtype=TensorProto.FLOAT), frac)
    k = b.op("Add", f, b.op("Cast", up, to=TensorProto.INT64))
    if isinstance(fmt, Pow2):
        k = b.op("Clip", k, b.const(1, np.int64), b.const(hi - lo, np.int64))  # exponents EMIN..EMAX
    else:  # each channel's own exponent window, broadcast along the axis
        shape = _channel_shape(fmt)
        k = b.op("Max", k, b.const((emins - lo).reshape(shape), np.int64))
        k = b.op("Min", k, b.const((emaxs - lo).reshape(shape), np.int64))
    b.op("Mul", b.op("Sign", "X"), b.op("Gather", pow_table, k), out="Y")  # Sign(±0) = +0


def function_proto(fmt: Format | str, rounding: str = "nearest_even", opset: int = 17) -> FunctionProto:
    """The standard-op ONNX function implementing ``QuantizeSim`` for one (format, rounding)."""
    fmt = parse_format(fmt)
    if rounding not in ROUNDINGS:
        raise RistrettoError(f"unknown rounding {rounding!r}")
    if opset < MIN_OPSET:
        raise RistrettoError(f"QuantizeSim function bodies need opset >= {MIN_OPSET}, the model has {opset}")
    b = _Body()
    if isinstance(fmt, PerChannel):
        if fmt.axis >= 0:
            raise RistrettoError(f"per-channel format {fmt}: the op stores a negative axis")
        body = {Fixed: _fixed_body, Pow2: _pow2_body}[type(fmt.formats[0])]
    else:
        body = {Fixed: _fixed_body, UFixed: _ufixed_body, Minifloat: _minifloat_body, Pow2: _pow2_body}[type(fmt)]
    body(b, fmt, rounding)
    fn = helper.make_function(
        DOMAIN, OP_TYPE, ["X"], ["Y"], b.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["format", "rounding", "axis"],
        doc_string=f"QuantizeSim {fmt} ({rounding}) from standard ops",
    )
    fn.overload = overload_name(fmt, rounding)
    return fn


def default_opset(model: ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise RistrettoError("model imports no version of the default ONNX domain")


def _iter_graph_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_graph_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_graph_nodes(g)


def _rank_of(graph: onnx.GraphProto, name: str) -> int | None:
    for init in graph.initializer:
        if init.name == name:
            return len(init.dims)
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def attach_functions(model: ModelProto) -> ModelProto:
    """Return a copy of ``model`` carrying a function body for every ``QuantizeSim`` node.

    Each node's ``overload`` is set from its attributes, bodies no node uses are dropped, the
    ``ai.ristretto`` opset is imported and the IR version raised to at least 10 (overloads).
    Idempotent: attaching twice gives the same model.
    """
    out = ModelProto()
    out.CopyFrom(model)
    opset = default_opset(out)
    needed: dict[str, tuple[Format, str]] = {}
    for node in _iter_graph_nodes(out.graph):
        if is_quantize_sim(node):
            fmt, rounding = node_format(node)
            if isinstance(fmt, PerChannel) and fmt.axis >= 0:
                fmt = _negative_axis(fmt, _rank_of(out.graph, node.input[0]))
                for attr in node.attribute:
                    if attr.name == "axis":
                        attr.i = fmt.axis
            node.overload = overload_name(fmt, rounding)
            needed[node.overload] = (fmt, rounding)
    keep = [f for f in out.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del out.functions[:]
    out.functions.extend(keep)
    out.functions.extend(function_proto(f, r, opset) for _, (f, r) in sorted(needed.items()))
    if not any(imp.domain == DOMAIN for imp in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, OP_VERSION))
    out.ir_version = max(out.ir_version, MIN_IR_VERSION)
    return out
