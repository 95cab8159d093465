"""``export --to qonnx``: the simulated model in QONNX's dialect (FINN, hls4ml, Brevitas).

QONNX (Pappalardo et al., 2022) marks quantization with ``Quant`` (IntQuant) and ``FloatQuant``
nodes in the ``qonnx.custom_op.general`` domain; its ``execute_onnx`` is the reference semantics.
Each ``QuantizeSim`` node becomes, checked against qonnx 1.0's own definitions:

* fixed point ``Fixed(B, FL)`` (per tensor or per channel): ``Quant(x, scale=2**-FL, zeropt=0,
  bitwidth=B)`` with ``signed=1, narrow=0, rounding_mode="ROUND"``. qonnx clamps ``x / scale`` to
  ``[-2**(B-1), 2**(B-1) - 1]`` and then rounds with ``np.round`` (half to even); clamping to integer
  bounds commutes with rounding, so this is our round-then-saturate exactly. Weights keep their
  float initializer with a Quant on it (the form FINN's streamlining expects).
* minifloat (thesis ch. 6, E exponent and M mantissa bits): ``FloatQuant(x, scale=1,
  exponent_bitwidth=E, mantissa_bitwidth=M, exponent_bias=2**(E-1)-1, max_val=(2-2**-M)*2**emax)``
  with ``has_inf=0, has_nan=0, has_subnormal=0, saturation=1, rounding_mode="ROUND"``: every
  exponent code is a normal number, and values beyond the largest saturate, as ours. Our minifloat
  has no denormals; qonnx 1.0's executor ignores ``has_subnormal`` (its ``float_quant`` always keeps
  subnormals), so a flush to zero of ``|y| < 2**emin`` follows in standard ops (Abs,
  GreaterOrEqual, Cast, Mul: idempotent for a backend that honours ``has_subnormal=0``).
* power-of-two weights: constants on the grid (QONNX has no power-of-two quantizer, and
  ``FloatQuant`` with a zero-bit mantissa rounds in the linear domain, not the log domain).
* anything else (power-of-two activations, stochastic rounding) is inlined as the QuantizeSim
  node's standard-op function body, so the model needs nothing but onnx ops and qonnx's domain.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.inliner
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from ristretto_onnx.export.qdq import EXPORT_KEY
from ristretto_onnx.export.rewrite import rewrite_quantizers
from ristretto_onnx.export.sim_graph import Quantizer, read_sim
from ristretto_onnx.formats import Fixed, Minifloat, PerChannel
from ristretto_onnx.ops import DOMAIN, MIN_IR_VERSION, attach_functions
from ristretto_onnx.passes.graph import unique_name
from ristretto_onnx.passes.slots import set_metadata

QONNX_DOMAIN = "qonnx.custom_op.general"


def export_qonnx(sim: ModelProto) -> ModelProto:
    """The QONNX model of ``sim`` (see the module docstring); ``sim`` is not modified."""
    info = read_sim(sim)
    out, inlined = rewrite_quantizers(info, _replace)
    if inlined:
        out = onnx.inliner.inline_local_functions(attach_functions(out))
    del out.functions[:]
    imports = [i for i in out.opset_import if i.domain not in (DOMAIN, QONNX_DOMAIN)]
    imports.append(helper.make_opsetid(QONNX_DOMAIN, 1))
    del out.opset_import[:]
    out.opset_import.extend(imports)
    set_metadata(out, EXPORT_KEY, json.dumps({"to": "qonnx", "inlined_quantize_sim": inlined},
                                             separators=(",", ":")))
    out.ir_version = max(out.ir_version, MIN_IR_VERSION)
    return out


def _replace(q: Quantizer, graph: onnx.GraphProto, taken: set[str]) -> list[NodeProto] | None:
    fmt = q.format
    if q.rounding != "nearest_even":
        return None
    fixed = isinstance(fmt, Fixed) or (isinstance(fmt, PerChannel) and isinstance(fmt.formats[0], Fixed))
    if fixed:
        return [_quant(q, graph, taken)]
    if isinstance(fmt, Minifloat):
        return _float_quant(q, graph, taken)
    if q.is_constant:  # power-of-two weights: constants on the grid
        graph.initializer.append(numpy_helper.from_array(fmt.quantize(q.constant), q.output))
        return []
    return None


def _const(graph: onnx.GraphProto, taken: set[str], stem: str, value, dtype=np.float32) -> str:
    name = unique_name(stem, taken)
    taken.add(name)
    graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
    return name


def _quant(q: Quantizer, graph: onnx.GraphProto, taken: set[str]) -> NodeProto:
    fmt = q.format
    if isinstance(fmt, PerChannel):
        rank = q.rank if q.rank is not None else -fmt.axis
        bits = fmt.formats[0].bits
        frac = fmt.params()[1].reshape(fmt.broadcast_shape(rank))
    else:
        bits, frac = fmt.bits, np.asarray(fmt.frac_bits)
    stem = q.output
    scale = _const(graph, taken, f"{stem}_scale", np.ldexp(1.0, -frac))
    zero = _const(graph, taken, f"{stem}_zeropt", 0.0)
    width = _const(graph, taken, f"{stem}_bitwidth", float(bits))
    return helper.make_node("Quant", [q.input, scale, zero, width], [q.output], name=f"{q.node}:quant",
                            domain=QONNX_DOMAIN, signed=1, narrow=0, rounding_mode="ROUND")


def _float_quant(q: Quantizer, graph: onnx.GraphProto, taken: set[str]) -> list[NodeProto]:
    fmt: Minifloat = q.format
    stem = q.output
    inputs = [q.input,
              _const(graph, taken, f"{stem}_scale", 1.0),
              _const(graph, taken, f"{stem}_exponent_bitwidth", float(fmt.exp_bits)),
              _const(graph, taken, f"{stem}_mantissa_bitwidth", float(fmt.mant_bits)),
              _const(graph, taken, f"{stem}_exponent_bias", float(fmt.bias)),
              _const(graph, taken, f"{stem}_max_val", fmt.max_value)]
    raw, absolute, normal, mask = (unique_name(f"{stem}_{s}", taken) for s in ("floatquant", "abs", "normal", "mask"))
    smallest = _const(graph, taken, f"{stem}_smallest_normal", fmt.smallest_positive)
    return [
        helper.make_node("FloatQuant", inputs, [raw], name=f"{q.node}:floatquant", domain=QONNX_DOMAIN,
                         has_inf=0, has_nan=0, has_subnormal=0, saturation=1, rounding_mode="ROUND"),
        helper.make_node("Abs", [raw], [absolute], name=f"{q.node}:flush_abs"),
        helper.make_node("GreaterOrEqual", [absolute, smallest], [normal], name=f"{q.node}:flush_cmp"),
        helper.make_node("Cast", [normal], [mask], name=f"{q.node}:flush_cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [raw, mask], [q.output], name=f"{q.node}:flush"),
    ]
