"""``export --to qdq``: the simulated model as standard QuantizeLinear/DequantizeLinear.

Deployment runtimes (TensorRT, onnxruntime's QDQ path, most NPU compilers) read quantization from
Q/DQ pairs. Dynamic fixed point maps onto them without any approximation: a ``Fixed(B, FL)``
group is the integer grid ``k * 2**-FL`` with ``k`` in ``[-2**(B-1), 2**(B-1) - 1]`` (thesis 5.1),
so the scale is the power of two ``2**-FL``, the zero point is 0 (symmetric, as TensorRT
requires) and both ``x / scale`` and ``q * scale`` are exact in float32. What each
``QuantizeSim`` node becomes:

* **activations**, fixed point of up to 16 bits: ``[Clip] -> QuantizeLinear -> DequantizeLinear``
  with the narrowest signed type: int4 (<= 4 bits) and int16 (9-16 bits) need opset 21 (onnxruntime
  rejects them below), int8 works from opset 13. Where the width is narrower than the type (a
  6-bit group in int8) a Clip to the format's bounds comes first; clipping to integer bounds
  commutes with round-half-even, so Clip + Q equals the simulation's round-then-saturate.
  Per-channel formats get the scale vector and ``axis``; their clip is a broadcast Max/Min.
  Before an int4 QuantizeLinear the clip is written as Max + Min: onnxruntime 1.32's
  ClipQuantFusion optimizer fails session creation on a Clip followed by an int4 QuantizeLinear
  ("Unexpected data type for QuantizeLinear input y_zero_point of 22").
* **weights and biases** (constant inputs), fixed point: the integers themselves as an int8
  (int4/int16 where the opset already allows them, else int32) initializer and one
  ``DequantizeLinear`` (per-channel on the weights' output-channel axis): TensorRT's explicit
  quantization form for weights.
* **power-of-two and minifloat constants**: the quantized values as a float initializer
  (constants on the grid; a pow2 weight is a shift, not an affine integer).
* **everything else stays a QuantizeSim node with its standard-op function body**: minifloat
  activations, pow2 activations, fixed point wider than 16 bits, stochastic rounding. Minifloat
  never maps to FLOAT8: our minifloat (thesis ch. 6) has no denormals (it flushes to zero), uses
  every exponent code for normal numbers and saturates; E4M3FN, E5M2, E4M3FNUZ and E5M2FNUZ all
  have denormals and reserve codes for NaN (and E5M2 for infinity), so their value grids differ
  (:func:`float8_match` checks this on the grids and finds no match for any 8-bit minifloat).

The export is exact (max abs difference 0 against the simulated model) in onnxruntime; see
``docs/EXPORT.md`` for what onnxruntime's QDQ fusions do to that.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.export.rewrite import rewrite_quantizers
from ristretto_onnx.export.sim_graph import Quantizer, read_sim
from ristretto_onnx.formats import Fixed, Minifloat, PerChannel
from ristretto_onnx.ops import DOMAIN, MIN_IR_VERSION, OP_TYPE, attach_functions, default_opset
from ristretto_onnx.passes.graph import unique_name
from ristretto_onnx.passes.slots import set_metadata

EXPORT_KEY = "ristretto.export"
#: Opset where QuantizeLinear/DequantizeLinear accept int4 and int16.
OPSET_NARROW_TYPES = 21
_INT_TYPES = ((4, TensorProto.INT4), (8, TensorProto.INT8), (16, TensorProto.INT16), (32, TensorProto.INT32))


def export_qdq(sim: ModelProto) -> ModelProto:
    """The QDQ model of ``sim`` (see the module docstring); ``sim`` is not modified."""
    info = read_sim(sim)
    opset = default_opset(sim)
    if any(_activation_type(q) in (TensorProto.INT4, TensorProto.INT16) for q in info.quantizers):
        opset = max(opset, OPSET_NARROW_TYPES)
    chained = _chained(info.model.graph, info.quantizers)
    out, kept = rewrite_quantizers(
        info, lambda q, graph, taken: _replace(q, graph, taken, opset, q.node in chained))
    out = _finish(out, opset, bool(kept))
    set_metadata(out, EXPORT_KEY, json.dumps({"to": "qdq", "kept_quantize_sim": kept}, separators=(",", ":")))
    return out


def _type_for(bits: int, opset: int) -> int:
    for width, dtype in _INT_TYPES:
        if bits <= width and (opset >= OPSET_NARROW_TYPES or dtype not in (TensorProto.INT4, TensorProto.INT16)):
            return dtype
    raise AssertionError(bits)


def _width(dtype: int) -> int:
    return {TensorProto.INT4: 4, TensorProto.INT8: 8, TensorProto.INT16: 16, TensorProto.INT32: 32}[dtype]


def _fixed_params(fmt) -> tuple[int, np.ndarray] | None:
    """(bits, fractional bits as an array: scalar or per channel) for fixed point formats."""
    if isinstance(fmt, Fixed):
        return fmt.bits, np.asarray(fmt.frac_bits)
    if isinstance(fmt, PerChannel) and isinstance(fmt.formats[0], Fixed):
        return fmt.formats[0].bits, fmt.params()[1]
    return None


def _activation_type(q: Quantizer) -> int | None:
    """The Q/DQ integer type of an activation quantizer, or None when it stays a QuantizeSim."""
    params = _fixed_params(q.format)
    if q.is_constant or q.rounding != "nearest_even" or params is None or params[0] > 16:
        return None
    return _type_for(params[0], OPSET_NARROW_TYPES)


def _axis(q: Quantizer) -> int:
    """The non-negative axis of a per-channel format (the op may store it negative)."""
    axis = q.format.axis
    return axis + q.rank if axis < 0 and q.rank is not None else axis


def _chained(graph: onnx.GraphProto, quantizers) -> set[str]:
    """Activation quantizers that read another Q/DQ-exported quantizer's output (through Identity).

    onnxruntime's DoubleQDQPairsRemover (a basic optimization, on even with QDQ fusion disabled)
    merges Q1 -> DQ1 -> Q2 -> DQ2 into one pair, which drops a rounding step: the simulation rounds
    to the first grid and then to the second, and that double rounding differs at ties. A guard
    op between the pairs (the format's lower bound as Max, a no-op on the values) keeps both.
    """
    by_output = {n.output[0]: n for n in graph.node if n.output}
    exported = {q.output: q for q in quantizers if _activation_type(q) is not None}
    out = set()
    for q in quantizers:
        if _activation_type(q) is None:
            continue
        name = q.input
        while name in by_output and by_output[name].op_type == "Identity" and name not in exported:
            name = by_output[name].input[0]
        if name in exported:
            out.add(q.node)
    return out


def _replace(q: Quantizer, graph: onnx.GraphProto, taken: set[str], opset: int,
             chained: bool = False) -> list[NodeProto] | None:
    params = _fixed_params(q.format)
    if q.rounding != "nearest_even":
        return None
    if q.is_constant:
        if params is None:  # pow2 / minifloat weights: constants on the grid
            _add_init(graph, q.format.quantize(q.constant), q.output)
            return []
        return _constant_dq(q, params, graph, taken, opset)
    dtype = _activation_type(q)
    if dtype is None:
        return None
    return _activation_qdq(q, params, dtype, graph, taken, chained)


def _scale_and_zero(q: Quantizer, frac: np.ndarray, dtype: int, graph, taken, stem: str):
    scale = _add_init(graph, np.ldexp(np.float32(1.0), -frac).astype(np.float32),
                      unique_name(f"{stem}_scale", taken))
    zero = unique_name(f"{stem}_zero_point", taken)
    graph.initializer.append(helper.make_tensor(zero, dtype, list(frac.shape), [0] * int(frac.size)))
    attrs = {"axis": _axis(q)} if frac.ndim else {}
    return scale, zero, attrs


def _constant_dq(q: Quantizer, params, graph, taken: set[str], opset: int) -> list[NodeProto]:
    bits, frac = params
    shape = q.format.broadcast_shape(q.constant.ndim) if frac.ndim else ()
    k = q.format.quantize(q.constant).astype(np.float64) * np.ldexp(1.0, frac.reshape(shape))
    dtype = _type_for(bits, opset)
    stem = q.output
    ints = unique_name(f"{stem}_int{_width(dtype)}", taken)
    graph.initializer.append(_int_tensor(ints, k, dtype))
    scale, zero, attrs = _scale_and_zero(q, frac, dtype, graph, taken, stem)
    return [helper.make_node("DequantizeLinear", [ints, scale, zero], [q.output], name=f"{q.node}:dq", **attrs)]


def _int_tensor(name: str, k: np.ndarray, dtype: int) -> TensorProto:
    ints = np.rint(k).astype(np.int64)
    if dtype == TensorProto.INT4:
        return helper.make_tensor(name, dtype, list(ints.shape), ints.ravel().tolist())
    np_type = {TensorProto.INT8: np.int8, TensorProto.INT16: np.int16, TensorProto.INT32: np.int32}[dtype]
    return numpy_helper.from_array(ints.astype(np_type), name)


def _activation_qdq(q: Quantizer, params, dtype: int, graph, taken: set[str],
                    chained: bool = False) -> list[NodeProto]:
    bits, frac = params
    stem = q.output
    nodes: list[NodeProto] = []
    source = q.input
    if chained and bits == _width(dtype):  # see _chained
        lo = (-(2.0 ** (bits - 1)) * np.ldexp(1.0, -frac)).astype(np.float32)
        shape = () if frac.ndim == 0 else (frac.size,) + (1,) * (-q.format.axis - 1)
        lo_name = _add_init(graph, lo.reshape(shape), unique_name(f"{stem}_guard_lo", taken))
        guarded = unique_name(f"{stem}_guarded", taken)
        nodes.append(helper.make_node("Max", [source, lo_name], [guarded], name=f"{q.node}:guard"))
        source = guarded
    if bits < _width(dtype):
        lo = -(2.0 ** (bits - 1)) * np.ldexp(1.0, -frac)
        hi = (2.0 ** (bits - 1) - 1) * np.ldexp(1.0, -frac)
        clipped = unique_name(f"{stem}_clipped", taken)
        if frac.ndim == 0 and dtype != TensorProto.INT4:
            lo_name = _add_init(graph, np.float32(lo), unique_name(f"{stem}_clip_lo", taken))
            hi_name = _add_init(graph, np.float32(hi), unique_name(f"{stem}_clip_hi", taken))
            nodes.append(helper.make_node("Clip", [source, lo_name, hi_name], [clipped], name=f"{q.node}:clip"))
        else:  # per-channel bounds (Clip takes scalars only) and int4 (see _CLIP_INT4) use Max/Min
            if frac.ndim == 0:
                shape = ()
            elif q.rank is not None:
                shape = q.format.broadcast_shape(q.rank)
            else:
                shape = (frac.size,) + (1,) * (-q.format.axis - 1)
            lo_name = _add_init(graph, lo.reshape(shape).astype(np.float32), unique_name(f"{stem}_clip_lo", taken))
            hi_name = _add_init(graph, hi.reshape(shape).astype(np.float32), unique_name(f"{stem}_clip_hi", taken))
            low = unique_name(f"{stem}_clip_low", taken)
            nodes.append(helper.make_node("Max", [source, lo_name], [low], name=f"{q.node}:clip_low"))
            nodes.append(helper.make_node("Min", [low, hi_name], [clipped], name=f"{q.node}:clip_high"))
        source = clipped
    scale, zero, attrs = _scale_and_zero(q, frac, dtype, graph, taken, stem)
    if frac.ndim and q.rank is None:
        attrs = {"axis": q.format.axis}
    ints = unique_name(f"{stem}_int{_width(dtype)}", taken)
    nodes.append(helper.make_node("QuantizeLinear", [source, scale, zero], [ints], name=f"{q.node}:q", **attrs))
    nodes.append(helper.make_node("DequantizeLinear", [ints, scale, zero], [q.output], name=f"{q.node}:dq", **attrs))
    return nodes


def _add_init(graph: onnx.GraphProto, value, name: str) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
    return name


def _finish(model: ModelProto, opset: int, keeps_quantize_sim: bool) -> ModelProto:
    """Raise the opset where int4/int16 need it, then re-attach or drop the QuantizeSim bodies."""
    if opset > default_opset(model):
        from onnx import version_converter

        metadata = [(p.key, p.value) for p in model.metadata_props]
        try:
            model = version_converter.convert_version(model, opset)  # drops the local functions
        except Exception as e:  # the converter raises bare RuntimeErrors with C++ text
            raise RistrettoError(f"int4/int16 Q/DQ need opset {opset}; converting the model failed: "
                                 f"{' '.join(str(e).split())[:200]}") from None
        del model.metadata_props[:]
        for key, value in metadata:
            set_metadata(model, key, value)
    if keeps_quantize_sim:
        model = attach_functions(model)
    else:
        keep = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
        del model.functions[:]
        model.functions.extend(keep)
        imports = [i for i in model.opset_import if i.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(imports)
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    return model


# ---------------------------------------------------------------------------------------------
# FLOAT8: which ONNX types have exactly the value grid of one of our minifloats

FLOAT8_TYPES = {"FLOAT8E4M3FN": TensorProto.FLOAT8E4M3FN, "FLOAT8E4M3FNUZ": TensorProto.FLOAT8E4M3FNUZ,
                "FLOAT8E5M2": TensorProto.FLOAT8E5M2, "FLOAT8E5M2FNUZ": TensorProto.FLOAT8E5M2FNUZ}


def float8_values(dtype: int) -> np.ndarray:
    """All finite values of an ONNX FLOAT8 type, from its 256 codes (onnx's own conversion)."""
    codes = np.arange(256, dtype=np.uint8)
    t = helper.make_tensor("codes", dtype, [256], codes.tobytes(), raw=True)
    values = numpy_helper.to_array(t).astype(np.float32)
    return np.unique(values[np.isfinite(values)])


def minifloat_values(fmt: Minifloat) -> np.ndarray:
    """All values of our minifloat: ± normals of every exponent code, and zero (no denormals)."""
    m = np.arange(2**fmt.mant_bits)
    mags = np.concatenate([np.ldexp(1.0 + m / 2**fmt.mant_bits, e) for e in range(fmt.emin, fmt.emax + 1)])
    return np.unique(np.concatenate([-mags, [0.0], mags])).astype(np.float32)


def float8_match(fmt: Minifloat) -> str | None:
    """The FLOAT8 type whose finite values equal ``fmt``'s, up to a power-of-two scale, or None."""
    if fmt.bits != 8:
        return None
    ours = minifloat_values(fmt)
    for name, dtype in FLOAT8_TYPES.items():
        theirs = float8_values(dtype)
        if theirs.size != ours.size:
            continue
        ratio = theirs.max() / ours.max()
        if ratio > 0 and np.array_equal(theirs, (ours.astype(np.float64) * ratio).astype(np.float32)):
            return name
    return None
