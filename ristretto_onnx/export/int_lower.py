"""Read a simulated model into the integer program of :mod:`.int_program`.

The simulated model (``QuantizeSim`` nodes on every layer's inputs, weights and outputs, thesis
fig. 2.9) is walked in graph order, tracking for each tensor what it holds: a float constant,
quantized integer weights, an integer tensor of known fixed point, or a float tensor (before
the first quantizer or after a node with no integer form). The integer data path of thesis
5.1 follows from the formats alone: a layer accumulates at ``FL_in + FL_w``, the output slot's
format fixes the shift. Only dynamic fixed point maps to integers; power-of-two weights
(``pow2:EMIN:EMAX``) are fixed point too (``fixed:EMAX-EMIN+2:-EMIN``) and are accepted; a
minifloat tensor or stochastic rounding is a :class:`RistrettoError` naming the tensor.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.export.int_program import (
    Const, FloatT, LayerNote, Program, QConst, Step, Tensor, rne_div, shift_factors,
)
from ristretto_onnx.export.int_ops import lower_int_op
from ristretto_onnx.formats import Fixed, PerChannel, Pow2, UFixed, quantize
from ristretto_onnx.ops import default_opset, is_quantize_sim, node_format
from ristretto_onnx.passes.graph import runtime_input_infos
from ristretto_onnx.passes.slots import has_slots, read_layers

MAX_BITS = 16


def fixed_params(fmt, ndim: int, where: str) -> tuple[int, np.ndarray, int | None]:
    """``(bits, frac, axis)`` of a format that maps to fixed point; ``frac`` broadcasts."""
    base = fmt.formats[0] if isinstance(fmt, PerChannel) else fmt
    if isinstance(base, Fixed):
        if isinstance(fmt, PerChannel):
            axis = fmt.axis + ndim if fmt.axis < 0 else fmt.axis
            return base.bits, fmt.params()[1].reshape(fmt.broadcast_shape(ndim)), axis
        return fmt.bits, np.array(fmt.frac_bits), None
    if isinstance(base, Pow2):
        if isinstance(fmt, PerChannel):
            emin, emax = fmt.params()
            axis = fmt.axis + ndim if fmt.axis < 0 else fmt.axis
            return int(np.max(emax - emin)) + 2, (-emin).reshape(fmt.broadcast_shape(ndim)), axis
        return fmt.exp_max - fmt.exp_min + 2, np.array(-fmt.exp_min), None
    raise RistrettoError(f"integer export: {where} has format {fmt}; only dynamic fixed point "
                         "(and power-of-two weights) map to integer arithmetic")


class Lowering:
    def __init__(self, sim: onnx.ModelProto, exact_bias: bool = True) -> None:
        self.exact_bias = exact_bias
        self.graph = sim.graph
        self.opset = default_opset(sim)
        self.state: dict[str, object] = {}
        self.steps: list[Step] = []
        self.tensors: dict[str, Tensor] = {}
        self.float_inits: dict[str, np.ndarray] = {}
        self.notes: dict[str, LayerNote] = {}  # accumulator name -> its layer's note
        self.layer_of: dict[str, str] = {}  # MAC node name -> layer name (from the metadata)
        if has_slots(sim):
            self.layer_of = {layer.node: layer.name for layer in read_layers(sim)}
        self._names = {n for node in sim.graph.node for n in list(node.input) + list(node.output)}
        self._deq: dict[str, str] = {}

    # ---- helpers used by int_ops

    def fresh(self, stem: str) -> str:
        name, i = stem, 0
        while name in self._names:
            i += 1
            name = f"{stem}{i}"
        self._names.add(name)
        return name

    def new_tensor(self, orig: str, shape, frac, lo: int, hi: int, *, div: int = 1,
                   acc: bool = False) -> Tensor:
        t = Tensor(self.fresh(f"{orig}__{'acc' if acc else 'int'}"), tuple(int(d) for d in shape),
                   np.asarray(frac, dtype=np.int64), int(lo), int(hi), int(div), acc)
        self.tensors[t.name] = t
        return t

    def emit(self, kind: str, inputs, out: Tensor | str, node: str = "", **attrs) -> None:
        self.steps.append(Step(kind, list(inputs), out if isinstance(out, str) else out.name, attrs, node))

    def requant(self, t: Tensor, frac: int, lo: int, hi: int, orig: str, node: str = "") -> Tensor:
        """``t`` re-quantized to fraction ``frac`` and saturated to ``[lo, hi]``."""
        L, D = shift_factors(t.frac, frac, t.div)
        if np.all(L == 1) and np.all(D == 1) and t.fits(lo, hi):
            return t
        if max(abs(t.lo), abs(t.hi)) * int(np.max(L)) >= 2**62:
            raise RistrettoError(f"integer export: re-quantizing {orig!r} overflows 64 bits")
        ends = rne_div(np.array([t.lo, t.hi], dtype=np.int64)[:, None] * L.reshape(1, -1), D.reshape(1, -1))
        out = self.new_tensor(orig, t.shape, frac, max(lo, int(ends.min())), min(hi, int(ends.max())))
        self.emit("requant", [t.name], out, node, L=L, D=D, lo=lo, hi=hi)
        if t.name in self.notes:
            note = self.notes[t.name]
            note.shift = [int(s) for s in np.broadcast_to(np.asarray(t.frac) - frac, (len(note.acc_frac),))]
        return out

    def dequantize(self, t: Tensor) -> str:
        if t.name not in self._deq:
            name = self.fresh(t.name + "__deq")
            self.emit("dequantize", [t.name], name, scale=np.ldexp(1.0, -t.frac.astype(np.int64)), div=t.div)
            self._deq[t.name] = name
        return self._deq[t.name]

    # ---- the walk

    def run(self) -> Program:
        inits = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        for name, value in inits.items():
            self.state[name] = Const(value)
        inputs = runtime_input_infos(self.graph)
        if not inputs:
            raise RistrettoError("integer export: the model has no input")
        for vi in inputs:
            if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                raise RistrettoError(f"integer export: input {vi.name!r} is not float32")
            self.state[vi.name] = FloatT(vi.name, _per_sample_shape(vi))
        for node in self.graph.node:
            self.node(node)
        outputs = []
        for vi in self.graph.output:
            s = self.state.get(vi.name)
            if isinstance(s, Tensor):
                self.emit("dequantize", [s.name], vi.name, scale=np.ldexp(1.0, -s.frac.astype(np.int64)),
                          div=s.div)
            elif not isinstance(s, FloatT):
                raise RistrettoError(f"integer export: graph output {vi.name!r} is a constant")
            elif s.name != vi.name:  # a float value that reached the output through Identity slots
                node = helper.make_node("Identity", [s.name], [vi.name], name=f"{vi.name}__output")
                self.steps.append(Step("float", [s.name], vi.name, {"node": node}, node.name))
            outputs.append(vi.name)
        first = self.state[inputs[0].name]
        return Program(inputs[0].name, first.shape, outputs, self.steps, self.tensors,
                       self.float_inits, list(self.notes.values()))

    def node(self, node: onnx.NodeProto) -> None:
        ins = [self.state.get(n) if n else None for n in node.input]
        for n, s in zip(node.input, ins):
            if n and s is None:
                raise RistrettoError(f"integer export: node {node.name!r} reads {n!r}, which no "
                                     "earlier node writes (the graph is not in topological order)")
        if is_quantize_sim(node):
            self.state[node.output[0]] = self.quantize_sim(node, ins[0])
        elif node.op_type == "Identity":
            self.state[node.output[0]] = ins[0]
        elif node.op_type == "Constant":
            self.state[node.output[0]] = Const(numpy_helper.to_array(helper.get_attribute_value(node.attribute[0])))
        elif ins and all(isinstance(s, Const) or s is None for s in ins) and node.op_type not in _MAC_OPS:
            for name, value in zip(node.output, _fold(node, ins, self.opset)):
                self.state[name] = Const(value)
        elif any(isinstance(s, Tensor) for s in ins) or node.op_type in _MAC_OPS:
            out = lower_int_op(self, node, ins)
            if out is None:
                self.float_node(node, ins)
            else:
                self.state[node.output[0]] = out
        else:
            self.float_node(node, ins)

    def quantize_sim(self, node: onnx.NodeProto, src) -> object:
        fmt, rounding = node_format(node)
        where = f"tensor {node.input[0]!r}"
        if rounding != "nearest_even":
            raise RistrettoError(f"integer export: {where} uses {rounding} rounding; only "
                                 "round-half-even is an integer data path")
        if isinstance(src, (Const, QConst)):
            value = np.asarray(src.value, dtype=np.float32)
            bits, frac, axis = fixed_params(fmt, value.ndim, where)
            if bits > MAX_BITS:
                raise RistrettoError(f"integer export: {where} ({fmt}) needs {bits} bits; at most {MAX_BITS}")
            q = quantize(value, fmt).astype(np.float64)
            k = np.ldexp(q, np.broadcast_to(frac, q.shape).astype(np.int64))
            return QConst(k.astype(np.int64), frac.astype(np.int64), bits, axis, str(fmt))
        if isinstance(fmt, UFixed):  # unsigned codes: negative values saturate to 0
            lo, hi = 0, 2**fmt.bits - 1
        elif isinstance(fmt, PerChannel) or not isinstance(fmt, Fixed):
            raise RistrettoError(f"integer export: {where} has format {fmt}; activations must be "
                                 "dynamic fixed point with one fractional length (fixed:B:F or ufixed:B:F)")
        else:
            lo, hi = -(2 ** (fmt.bits - 1)), 2 ** (fmt.bits - 1) - 1
        if isinstance(src, FloatT):
            if src.shape is None:
                raise RistrettoError(f"integer export: the shape of {node.input[0]!r} is unknown")
            out = self.new_tensor(node.output[0], src.shape, fmt.frac_bits, lo, hi)
            self.emit("quantize", [src.name], out, node.name, frac=fmt.frac_bits, lo=lo, hi=hi)
            return out
        return self.requant(src, fmt.frac_bits, lo, hi, node.output[0], node.name)

    def float_node(self, node: onnx.NodeProto, ins) -> None:
        """Copy a node that has no integer form; integer inputs are dequantized first."""
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, s in enumerate(ins):
            if isinstance(s, Tensor):
                new.input[i] = self.dequantize(s)
            elif isinstance(s, FloatT):
                new.input[i] = s.name
            elif isinstance(s, Const):
                self.float_inits[node.input[i]] = np.asarray(s.value)
            elif isinstance(s, QConst):
                raise RistrettoError(f"integer export: node {node.name!r} ({node.op_type}) reads "
                                     f"quantized constant {node.input[i]!r} but has no integer form")
        self.steps.append(Step("float", [n for n in new.input if n], node.output[0], {"node": new}, node.name))
        for out in node.output:
            self.state[out] = FloatT(out, None)


_MAC_OPS = ("Conv", "Gemm", "MatMul")


def _fold(node: onnx.NodeProto, ins, opset: int) -> list[np.ndarray]:
    """Evaluate a node whose inputs are all constants (shape arithmetic, padding amounts)."""
    from onnx.reference import ReferenceEvaluator
    names = [f"c{i}" if s is not None else "" for i, s in enumerate(ins)]
    new = onnx.NodeProto()
    new.CopyFrom(node)
    del new.input[:]
    new.input.extend(names)
    graph = helper.make_graph([new], "fold", [], [onnx.ValueInfoProto(name=o) for o in node.output],
                              initializer=[numpy_helper.from_array(np.asarray(s.value), n)
                                           for n, s in zip(names, ins) if s is not None])
    try:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        return list(ReferenceEvaluator(model).run(None, {}))
    except Exception as e:  # the reference evaluator raises many types
        raise RistrettoError(f"integer export: cannot fold constant node {node.name!r} ({node.op_type}): {e}") from None


def _per_sample_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    dims = vi.type.tensor_type.shape.dim
    if not dims or any(not d.HasField("dim_value") for d in dims[1:]):
        return None
    return tuple(int(d.dim_value) for d in dims[1:])


def lower(sim: onnx.ModelProto, *, exact_bias: bool = True) -> Program:
    """The integer program of a simulated model (see the module docstring and :mod:`.int_ops`)."""
    return Lowering(sim, exact_bias).run()
