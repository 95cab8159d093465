"""``--to integer``: the bit-true integer model of a dynamic fixed point network (thesis 5.1).

The simulated model multiplies quantized values but accumulates in float32 (thesis 2.6.1.1);
this export computes what an accelerator computes: integer mantissas in, integer products
summed in an int32 accumulator, the bias added in the accumulator's fixed point, each layer
output re-quantized by an arithmetic shift with round-half-even and saturation, Concat inputs
and residual Adds aligned by shifts, and the graph outputs dequantized to float32 at the end.

How it runs in stock onnxruntime (CPU), all exact:

* operands of up to 8 bits go to ``ConvInteger`` / ``MatMulInteger`` as int8 (uint8 when a ReLU
  made them non-negative and they need the 8th bit), int32 accumulation; onnxruntime has no
  integer ``Conv`` and no float64 ``Conv``, so 9- to 16-bit operands are split into a signed
  high byte and an unsigned low byte (``x = 256·xh + xl``) and the byte products are summed with
  their shifts in int64, as a multi-precision multiplier array does;
* the bias is added in the accumulator (int32, int64 where its bound needs it); the re-quantization
  ``rne(k·L / D)`` (``D = 2**shift``) is written as ``Round(k·L·2**-shift)`` on float64, which is
  bit-identical to the arithmetic shift with round-half-even for ``|k·L| < 2**52`` (the scaling is
  exact and ``Round`` rounds half to even), then ``Clip`` saturates; ``shift="int64"`` writes the
  same with integer ops only (floor division from ``Mod``, one step up when the remainder is above
  half or exactly half with an odd quotient), about 5x slower in onnxruntime;
* max pooling runs on int8 or on exact float64 copies (onnxruntime has no int32 MaxPool);
  average pooling is a window sum (``ReduceSum`` or a depthwise ``ConvInteger`` of ones).

The model differs from the simulation only where float32 accumulation rounds: a float bias is
rounded onto the accumulator's grid here (the simulation adds it in float32), and sums beyond
2**24 accumulator steps round in float32 there. :mod:`.integer_check` measures both.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.export.int_lower import lower
from ristretto_onnx.export.int_program import Program, Step, Tensor
from ristretto_onnx.ops import default_opset
from ristretto_onnx.passes.graph import runtime_input_infos

INTEGER_KEY = "ristretto.integer"
IR_VERSION = 10
_I8, _U8, _INT32 = (-128, 127), (0, 255), (-(2**31), 2**31 - 1)
_NP = {TensorProto.INT32: np.int32, TensorProto.INT64: np.int64}


class _Graph:
    def __init__(self, program: Program, shift: str) -> None:
        self.p = program
        self.shift = shift
        self.types: dict[str, int] = {}  # integer tensor -> INT32 or INT64
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}__x{self._n}"

    def const(self, value, dtype) -> str:
        name = self.fresh("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def dtype(self, t: Tensor) -> int:
        return self.types.get(t.name) or (TensorProto.INT32 if t.fits(*_INT32) else TensorProto.INT64)

    def as_type(self, name: str, t: Tensor, to: int) -> str:
        return name if self.dtype(t) == to else self.op("Cast", name, to=to)

    def channel_const(self, t: Tensor, value: np.ndarray, dtype) -> str:
        """A per-channel constant broadcast along per-sample axis 0 (batch axis 1)."""
        value = np.asarray(value)
        if value.ndim == 1 and value.size > 1:
            value = value.reshape((value.size,) + (1,) * (len(t.shape) - 1))
        elif value.size == 1:
            value = value.reshape(())
        return self.const(value, dtype)


def _operand_parts(g: _Graph, name: str, t: Tensor) -> list[tuple[str, int]]:
    """int8/uint8 pieces of an activation with their left shifts (a byte split above 8 bits)."""
    if t.fits(*_I8):
        return [(g.op("Cast", name, to=TensorProto.INT8), 0)]
    if t.fits(*_U8):
        return [(g.op("Cast", name, to=TensorProto.UINT8), 0)]
    low = g.op("Mod", name, g.const(256, np.int32), fmod=0)
    high = g.op("Div", g.op("Sub", name, low), g.const(256, np.int32))
    return [(g.op("Cast", low, to=TensorProto.UINT8), 0), (g.op("Cast", high, to=TensorProto.INT8), 8)]


def _weight_parts(w: np.ndarray) -> list[tuple[np.ndarray, int]]:
    if w.min() >= -128 and w.max() <= 127:
        return [(w.astype(np.int8), 0)]
    low = np.mod(w, 256)
    return [(low.astype(np.uint8), 0), (((w - low) // 256).astype(np.int8), 8)]


def _mac(g: _Graph, s: Step, x: Tensor, w: np.ndarray, op_type: str, **attrs) -> tuple[str, int]:
    """``op_type(x, w)``: int32 for 8-bit operands, else the byte products summed in int64."""
    xparts, wparts = _operand_parts(g, s.inputs[0], x), _weight_parts(w)
    if len(xparts) == 1 and len(wparts) == 1:
        return g.op(op_type, xparts[0][0], g.const(wparts[0][0], wparts[0][0].dtype), **attrs), TensorProto.INT32
    total = None
    for xp, xs in xparts:
        for wp, ws in wparts:
            part = g.op("Cast", g.op(op_type, xp, g.const(wp, wp.dtype), **attrs), to=TensorProto.INT64)
            if xs + ws:
                part = g.op("Mul", part, g.const(1 << (xs + ws), np.int64))
            total = part if total is None else g.op("Add", total, part)
    return total, TensorProto.INT64


def _add_bias(g: _Graph, acc: str, acc_type: int, out: Tensor, bias: str, guard: int) -> str:
    to = g.dtype(out)
    if to != acc_type:
        acc = g.op("Cast", acc, to=to)
    if guard:
        acc = g.op("Mul", acc, g.const(1 << guard, _NP[to]))
    return g.op("Add", acc, bias, out=out.name)


def _conv(g: _Graph, s: Step, x: Tensor, out: Tensor) -> None:
    a = s.attrs
    acc, t = _mac(g, s, x, a["w"], "ConvInteger", kernel_shape=a["kernel"], strides=a["strides"],
                  pads=a["pads"], dilations=a["dilations"], group=a["group"])
    _add_bias(g, acc, t, out, g.channel_const(out, a["bias"], _NP[g.dtype(out)]), a["guard"])


def _fc(g: _Graph, s: Step, x: Tensor, out: Tensor) -> None:
    acc, t = _mac(g, s, x, np.ascontiguousarray(s.attrs["w"].T), "MatMulInteger")
    _add_bias(g, acc, t, out, g.const(s.attrs["bias"], _NP[g.dtype(out)]), s.attrs["guard"])


def _requant(g: _Graph, s: Step, x: Tensor, out: Tensor) -> None:
    a = s.attrs
    if g.shift == "int64" or max(abs(x.lo), abs(x.hi)) * int(np.max(a["L"])) >= 2**52:
        v = _shift_int64(g, s, x)
    else:  # exact in float64 while |k·L| < 2**52: power-of-two scaling, then Round (half to even)
        v = g.op("Cast", s.inputs[0], to=TensorProto.DOUBLE)
        if np.any(a["L"] != 1):
            v = g.op("Mul", v, g.channel_const(x, a["L"].astype(np.float64), np.float64))
        d = a["D"]
        if np.all((d & (d - 1)) == 0):
            v = g.op("Mul", v, g.channel_const(x, 1.0 / d.astype(np.float64), np.float64))
        else:  # a correctly rounded quotient lands on the same side of every .5 (|v| < 2**52)
            v = g.op("Div", v, g.channel_const(x, d.astype(np.float64), np.float64))
        v = g.op("Clip", g.op("Round", v), g.const(a["lo"], np.float64), g.const(a["hi"], np.float64))
    g.op("Cast", v, to=g.dtype(out), out=s.output)


def _shift_int64(g: _Graph, s: Step, x: Tensor) -> str:
    """The arithmetic shift in int64 ops only: floor division by Mod, then half to even."""
    a = s.attrs
    v = g.op("Cast", s.inputs[0], to=TensorProto.INT64)
    if np.any(a["L"] != 1):
        v = g.op("Mul", v, g.channel_const(x, a["L"], np.int64))
    if np.any(a["D"] != 1):
        d = g.channel_const(x, a["D"], np.int64)
        r = g.op("Mod", v, d, fmod=0)  # floor remainder, in [0, D)
        q = g.op("Div", g.op("Sub", v, r), d)  # exact division
        r2 = g.op("Mul", r, g.const(2, np.int64))
        odd = g.op("Equal", g.op("Mod", q, g.const(2, np.int64), fmod=0), g.const(1, np.int64))
        up = g.op("Or", g.op("Greater", r2, d), g.op("And", g.op("Equal", r2, d), odd))
        v = g.op("Add", q, g.op("Cast", up, to=TensorProto.INT64))
    return g.op("Clip", v, g.const(a["lo"], np.int64), g.const(a["hi"], np.int64))


def _pool(g: _Graph, s: Step, x: Tensor, out: Tensor) -> None:
    a = s.attrs
    window = dict(kernel_shape=a["kernel"], strides=a["strides"], pads=a["pads"])
    if s.kind == "maxpool":
        to = TensorProto.INT8 if x.fits(*_I8) else TensorProto.UINT8 if x.fits(*_U8) else TensorProto.DOUBLE
        pooled = g.op("MaxPool", g.op("Cast", s.inputs[0], to=to), ceil_mode=int(a["ceil"]), **window)
        g.op("Cast", pooled, to=g.dtype(out), out=s.output)
        return
    if list(a["kernel"]) == list(x.shape[1:]) and not any(a["pads"]):
        v = g.as_type(s.inputs[0], x, g.dtype(out))
        g.op("ReduceSum", v, g.const([2, 3], np.int64), keepdims=1, out=s.output)
        return
    ones = np.ones((x.shape[0], 1) + tuple(a["kernel"]), dtype=np.int64)
    total, _ = _mac(g, s, x, ones, "ConvInteger", group=x.shape[0], **window)
    g.op("Cast", total, to=g.dtype(out), out=s.output)


def _step(g: _Graph, s: Step) -> None:
    t = g.p.tensors
    x = t.get(s.inputs[0]) if s.inputs else None
    out = t.get(s.output)
    a = s.attrs
    if out is not None:
        same = s.kind in ("relu", "clip", "maxpool", "reshape", "slice", "pad") or (s.kind == "addconst" and out.fits(*_INT32))
        g.types[out.name] = g.dtype(x) if same else g.dtype(out)
    if s.kind == "quantize":
        v = g.op("Mul", s.inputs[0], g.const(np.ldexp(1.0, a["frac"]), np.float32))
        v = g.op("Clip", g.op("Round", v), g.const(a["lo"], np.float32), g.const(a["hi"], np.float32))
        g.op("Cast", v, to=g.dtype(out), out=s.output)
    elif s.kind == "conv":
        _conv(g, s, x, out)
    elif s.kind == "fc":
        _fc(g, s, x, out)
    elif s.kind == "requant":
        _requant(g, s, x, out)
    elif s.kind == "relu":
        g.op("Max", s.inputs[0], g.const(0, _NP[g.dtype(x)]), out=s.output)
    elif s.kind == "clip":
        ty = _NP[g.dtype(x)]
        g.op("Clip", s.inputs[0], g.const(a["lo"], ty), g.const(a["hi"], ty), out=s.output)
    elif s.kind in ("maxpool", "sumpool"):
        _pool(g, s, x, out)
    elif s.kind == "add":
        to = g.dtype(out)
        terms = [g.as_type(n, t[n], to) for n in s.inputs]
        terms = [n if m == 1 else g.op("Mul", n, g.const(m, _NP[to])) for n, m in zip(terms, (a["la"], a["lb"]))]
        g.op("Add", *terms, out=s.output)
    elif s.kind == "addconst":
        to = g.dtype(out)
        g.op("Add", g.as_type(s.inputs[0], x, to), g.channel_const(x, a["c"], _NP[to]), out=s.output)
    elif s.kind == "concat":
        to = g.dtype(out)
        terms = [g.as_type(n, t[n], to) for n in s.inputs]
        terms = [n if m == 1 else g.op("Mul", n, g.const(m, _NP[to])) for n, m in zip(terms, a["mults"])]
        g.op("Concat", *terms, axis=a["axis"] + 1, out=s.output)
    elif s.kind == "reshape":
        g.op("Reshape", s.inputs[0], g.const([0] + list(a["shape"]), np.int64), out=s.output)
    elif s.kind == "slice":
        axes = list(range(1, len(x.shape) + 1))
        ends = [st + (n - 1) * sp + (1 if sp > 0 else -1) for st, sp, n in zip(a["start"], a["step"], out.shape)]
        ends = [e if e >= 0 else -(2**62) for e in ends]
        g.op("Slice", s.inputs[0], g.const(a["start"], np.int64), g.const(ends, np.int64),
             g.const(axes, np.int64), g.const(a["step"], np.int64), out=s.output)
    elif s.kind == "pad":
        pads = [0] + list(a["begin"]) + [0] + list(a["end"])
        g.op("Pad", s.inputs[0], g.const(pads, np.int64), out=s.output)
    elif s.kind == "dequantize":
        v = g.op("Mul", g.op("Cast", s.inputs[0], to=TensorProto.DOUBLE), g.channel_const(x, a["scale"], np.float64))
        if a["div"] != 1:
            v = g.op("Div", v, g.const(float(a["div"]), np.float64))
        g.op("Cast", v, to=TensorProto.FLOAT, out=s.output)
    elif s.kind == "float":
        g.nodes.append(a["node"])
    else:  # pragma: no cover - the program has no other kinds
        raise RistrettoError(f"integer export: unknown step {s.kind!r}")


def render(program: Program, sim: onnx.ModelProto, *, shift: str = "float64") -> onnx.ModelProto:
    """The ONNX integer model of ``program`` (inputs and outputs as in ``sim``).

    ``shift`` chooses how the re-quantization is written: ``float64`` (``Round`` of the exactly
    scaled accumulator: bit-identical to the integer shift and about 5x faster in onnxruntime)
    or ``int64`` (floor division by ``Mod`` and an explicit half-to-even step).
    """
    if shift not in ("float64", "int64"):
        raise RistrettoError(f"unknown shift rendering {shift!r}: float64 or int64")
    g = _Graph(program, shift)
    for s in program.steps:
        _step(g, s)
    g.inits.extend(numpy_helper.from_array(v, n) for n, v in sorted(program.float_inits.items()))
    graph = helper.make_graph(g.nodes, f"{sim.graph.name or 'model'}_integer", runtime_input_infos(sim),
                              list(sim.graph.output), initializer=g.inits)
    opset = max(default_opset(sim), 13)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="ristretto-onnx", doc_string="bit-true integer model")
    model.ir_version = IR_VERSION
    entry = model.metadata_props.add()
    entry.key, entry.value = INTEGER_KEY, json.dumps(summary(program), separators=(",", ":"))
    onnx.checker.check_model(model)
    return model


def summary(program: Program) -> dict:
    """Per layer: operand and accumulator widths, bias exactness, output shifts."""
    from dataclasses import asdict
    layers = [asdict(n) for n in program.notes]
    return {
        "layers": layers,
        "bias_rounded": [n["layer"] for n in layers if n["bias"] == "rounded"],
        "float32_may_round": [n["layer"] for n in layers if not n["float32_exact"]],
        "float_nodes": [s.node for s in program.steps if s.kind == "float"],
    }


def export_integer(sim: onnx.ModelProto, *, exact_bias: bool = True, shift: str = "float64") -> onnx.ModelProto:
    """The bit-true integer ONNX model of a simulated dynamic fixed point model.

    ``exact_bias``: guard bits below the accumulator's grid hold a float bias exactly (default), or
    the bias is rounded onto the grid (see :mod:`.int_ops`); ``shift``: see :func:`render`.
    """
    return render(lower(sim, exact_bias=exact_bias), sim, shift=shift)
