"""Lower every ``QuantizeSim`` node to standard ops onnxruntime runs fast (exact, see the package).

* **Weights** (a ``QuantizeSim`` of a constant) are quantized once in numpy with the reference
  quantizer and become the constant the layer reads.
* **Activations in fixed point** become ``Mul(2^f) -> Clip(lo, hi) -> Round -> Mul(2^-f)``, or
  ``QuantizeLinear -> [Clip] -> DequantizeLinear`` at 8 bits or fewer where the sign of a zero
  cannot reach a graph output (:func:`sign_free_outputs`).
* **Unsigned activations** (``ufixed:B:F``) become a uint8 ``QuantizeLinear -> [Clip] ->
  DequantizeLinear`` pair for B <= 8 (exact: QuantizeLinear saturates negatives to code 0, +0 as
  the reference), else ``Mul -> Clip(0, hi) -> Round -> Abs -> Mul`` (Abs turns -0 into +0).
* Other activation formats keep the function body.

Before that, ``Constant`` nodes become constants and float slots (``Identity``) are bypassed so
the rules see the data path itself.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from ristretto_onnx.formats import Fixed, PerChannel, UFixed, quantize
from ristretto_onnx.ops import UFIXED_CLIP_MIN
from ristretto_onnx.passes.contract import PassResult, Transformation
from ristretto_onnx.passes.external import row_blocks
from ristretto_onnx.passes.graph import constant_value, external_proto, is_op, remove_nodes, subgraph_inputs
from ristretto_onnx.passes.transforms.set_formats import is_quantizer, quantizer_format
from ristretto_onnx.runtime.lowering.params import Params


class WeightCache:
    """Quantized weights by (tensor, format): a search re-quantizes the same tensors many times.

    ``max_bytes`` bounds the memory held (models over 2 GB: about one assignment of every
    weight); when a new weight would exceed it, the least recently used ones are dropped first
    (a plan that changes one weight's format re-quantizes that weight, not all of them). Weights still on
    disk (passes.external) are read and quantized in chunks of rows; their float values (format
    ``None``) are cached too, for the sessions that are fed their weights (runtime.lowering).
    """

    def __init__(self, max_entries: int = 4096, max_bytes: int | None = None) -> None:
        self._items: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._bytes = 0

    def get(self, tensor: gs.Constant, fmt, rounding: str) -> np.ndarray:
        key = (tensor.name, str(fmt), rounding)
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        need = tensor._values.nbytes
        while self._items and (len(self._items) >= self.max_entries or (
                self.max_bytes is not None and self._bytes + need > self.max_bytes)):
            self._bytes -= self._items.popitem(last=False)[1].nbytes
        hit = _quantize_constant(tensor, fmt, rounding)
        self._items[key] = hit
        self._bytes += hit.nbytes
        return hit

    def get_float(self, tensor: gs.Constant) -> np.ndarray:
        """The float value of a weight still on disk (passes.external), read once."""
        return self.get(tensor, None, "")

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0


def _quantize_constant(tensor: gs.Constant, fmt, rounding: str) -> np.ndarray:
    proto = external_proto(tensor)
    if fmt is None:
        return constant_value(tensor)
    if proto is None or isinstance(fmt, PerChannel) or rounding == "stochastic":
        return quantize(constant_value(tensor), fmt, rounding=rounding)
    out = np.empty(tuple(int(d) for d in proto.dims), np.float32)
    for start, stop, rows in row_blocks(proto):  # elementwise: the same values as all at once
        chunk = quantize(rows, fmt, rounding=rounding)
        if out.ndim:
            out[start:stop] = chunk
        else:
            out[()] = chunk
    return out


class ConstantsToInitializers(Transformation):
    """``Constant`` nodes with a tensor value become constants, so weights are recognized."""

    name = "constants_to_initializers"

    def apply(self, graph: gs.Graph) -> PassResult:
        return PassResult(graph, constants_to_initializers(graph))


class DropIdentities(Transformation):
    """Bypass ``Identity`` nodes (float slots) so the rules see the data path itself."""

    name = "drop_identities"

    def apply(self, graph: gs.Graph) -> PassResult:
        return PassResult(graph, drop_identities(graph))


class LowerQuantizers(Transformation):
    """Every ``QuantizeSim`` node becomes a baked constant or standard ops (module docstring)."""

    name = "lower_quantizers"

    def __init__(self, params: Params, weights: WeightCache) -> None:
        self.params, self.weights = params, weights

    def apply(self, graph: gs.Graph) -> PassResult:
        return PassResult(graph, lower_quantizers(graph, self.params, self.weights))


def constants_to_initializers(graph: gs.Graph) -> bool:
    done = []
    for node in graph.nodes:
        value = node.attrs.get("value") if is_op(node, "Constant") else None
        if len(node.attrs) == 1 and isinstance(value, gs.Constant):
            out = node.outputs[0]
            node.outputs.clear()
            out.to_constant(value._values)
            done.append(node)
    remove_nodes(graph, done)
    return bool(done)


def drop_identities(graph: gs.Graph) -> bool:
    outputs = {t.name for t in graph.outputs}
    nested: set[str] = set()
    for node in graph.nodes:
        nested |= subgraph_inputs(node)
    dropped = []
    for node in [n for n in graph.nodes if is_op(n, "Identity")]:
        out = node.outputs[0]
        if out.name in outputs or out.name in nested:
            continue
        src = node.inputs[0]
        for user in list(out.outputs):
            for k, t in enumerate(user.inputs):
                if t is out:
                    user.inputs[k] = src
        dropped.append(node)
    remove_nodes(graph, dropped)
    return bool(dropped)


def lower_quantizers(graph: gs.Graph, params: Params, weights: WeightCache) -> bool:
    sign_free = sign_free_outputs(graph)
    before = len(graph.nodes)
    overridable = {id(t) for t in graph.inputs}
    nodes: list[gs.Node] = []
    for node in graph.nodes:
        if not is_quantizer(node):
            nodes.append(node)
            continue
        fmt, rounding = quantizer_format(node)
        x, y = node.inputs[0], node.outputs[0]
        if isinstance(x, gs.Constant) and id(x) not in overridable and rounding == "nearest_even":
            values = weights.get(x, fmt, rounding)
            node.inputs.clear()
            node.outputs.clear()
            y.to_constant(values)
            continue
        if isinstance(fmt, UFixed) and rounding == "nearest_even":
            node.inputs.clear()
            node.outputs.clear()
            nodes += _lower_ufixed(x, y, fmt, node.name or y.name, params)
            continue
        if not (isinstance(fmt, Fixed) and rounding == "nearest_even"):
            nodes.append(node)
            continue
        node.inputs.clear()
        node.outputs.clear()
        stem, base = node.name or y.name, f"{y.name}__rsim"
        if fmt.bits <= 8 and y.name in sign_free:
            # Only the sign of a zero result could differ from Round (QuantizeLinear gives +0),
            # and nothing downstream can see it (see sign_free_outputs).
            s = params.new(f"{stem}/step", 2.0 ** -fmt.frac_bits)
            q = gs.Variable(f"{base}_q")
            nodes.append(gs.Node("QuantizeLinear", f"{base}/Quantize", inputs=[x, s, params.int8_zero()],
                                 outputs=[q]))
            # Parametric graphs clip even at 8 bits (a no-op there), so that every width from 2
            # to 8 shares one structure, hence one session, in a search over widths.
            if fmt.bits < 8 or params.parametric:
                lo = params.new(f"{stem}/lo", -(2 ** (fmt.bits - 1)), TensorProto.INT8)
                hi = params.new(f"{stem}/hi", 2 ** (fmt.bits - 1) - 1, TensorProto.INT8)
                qc = gs.Variable(f"{base}_qc")
                nodes.append(gs.Node("Clip", f"{base}/ClipInt", inputs=[q, lo, hi], outputs=[qc]))
                q = qc
            nodes.append(gs.Node("DequantizeLinear", f"{base}/Dequantize",
                                 inputs=[q, s, params.int8_zero()], outputs=[y]))
            continue
        a = params.new(f"{stem}/scale", 2.0 ** fmt.frac_bits)
        lo = params.new(f"{stem}/lo", -(2.0 ** (fmt.bits - 1)))
        hi = params.new(f"{stem}/hi", 2.0 ** (fmt.bits - 1) - 1)
        b = params.new(f"{stem}/step", 2.0 ** -fmt.frac_bits)
        scaled, clipped, ints = (gs.Variable(f"{base}_{s}") for s in ("scaled", "clipped", "int"))
        nodes += [
            gs.Node("Mul", f"{base}/Mul", inputs=[x, a], outputs=[scaled]),
            gs.Node("Clip", f"{base}/Clip", inputs=[scaled, lo, hi], outputs=[clipped]),
            gs.Node("Round", f"{base}/Round", inputs=[clipped], outputs=[ints]),
            gs.Node("Mul", f"{base}/Step", inputs=[ints, b], outputs=[y]),
        ]
    changed = len(nodes) != before or any(a is not b for a, b in zip(nodes, graph.nodes))
    graph.nodes = nodes
    return changed


def _lower_ufixed(x, y, fmt: UFixed, stem: str, params: Params) -> list[gs.Node]:
    base = f"{y.name}__rsim"
    if fmt.bits <= 8:
        s = params.new(f"{stem}/step", 2.0 ** -fmt.frac_bits)
        q = gs.Variable(f"{base}_q")
        out = [gs.Node("QuantizeLinear", f"{base}/UQuantize", inputs=[x, s, params.uint8_zero()], outputs=[q])]
        if fmt.bits < 8:
            lo = params.new(f"{stem}/ulo", 0, TensorProto.UINT8)
            hi = params.new(f"{stem}/uhi", 2**fmt.bits - 1, TensorProto.UINT8)
            qc = gs.Variable(f"{base}_qc")
            out.append(gs.Node("Clip", f"{base}/UClipInt", inputs=[q, lo, hi], outputs=[qc]))
            q = qc
        out.append(gs.Node("DequantizeLinear", f"{base}/UDequantize", inputs=[q, s, params.uint8_zero()],
                           outputs=[y]))
        return out
    a = params.new(f"{stem}/scale", 2.0 ** fmt.frac_bits)
    # clip to [1/4, hi] first: everything below half a step, -0 included, rounds to +0 (see
    # ristretto_onnx.ops._ufixed_body), so no Abs is needed
    lo = params.new(f"{stem}/lo", UFIXED_CLIP_MIN)
    hi = params.new(f"{stem}/hi", 2.0**fmt.bits - 1)
    b = params.new(f"{stem}/step", 2.0 ** -fmt.frac_bits)
    scaled, clipped, ints = (gs.Variable(f"{base}_{s}") for s in ("scaled", "clipped", "int"))
    return [
        gs.Node("Mul", f"{base}/Mul", inputs=[x, a], outputs=[scaled]),
        gs.Node("Clip", f"{base}/UClip", inputs=[scaled, lo, hi], outputs=[clipped]),
        gs.Node("Round", f"{base}/URound", inputs=[clipped], outputs=[ints]),
        gs.Node("Mul", f"{base}/UStep", inputs=[ints, b], outputs=[y]),
    ]


#: Ops through which a zero's sign cannot turn into a different value (sums, products, maxima,
#: rounding, data movement): at worst the sign of an exact zero result differs.
_SIGN_TRANSPARENT = frozenset({
    "Add", "AveragePool", "Clip", "Concat", "Flatten", "GlobalAveragePool", "GlobalMaxPool",
    "Identity", "Max", "MaxPool", "Min", "Mul", "Pad", "Relu", "Reshape", "Round", "Slice", "Split",
    "Squeeze", "Sub", "Transpose", "Unsqueeze",
})
#: Ops whose result cannot depend on the sign of a zero input: onnxruntime's convolution and
#: matrix kernels accumulate from +0, and +0 + (-0) = +0 (checked by the tests).
_SIGN_ABSORBING = frozenset({"Conv", "Gemm", "MatMul"})


def sign_free_outputs(graph: gs.Graph) -> set[str]:
    """Quantizer outputs whose zeros' signs can never reach a graph output.

    Every path from such a tensor goes through sign-transparent ops (or fixed-point quantizers)
    into a convolution or matrix product. For those quantizers a rounding that returns +0 where
    ``Round`` returns -0 (QuantizeLinear) gives bit-identical model outputs.
    """
    outputs = {t.name for t in graph.outputs}
    verdict: dict[int, bool] = {}

    def free(tensor: gs.Tensor, depth: int = 0) -> bool:
        if id(tensor) in verdict:
            return verdict[id(tensor)]
        if tensor.name in outputs or depth > 200:
            return False
        verdict[id(tensor)] = False  # cycles (there are none in a valid graph) count as visible
        ok = True
        for node in tensor.outputs:
            if node.op in _SIGN_ABSORBING and (node.domain or "") in ("", "ai.onnx") \
                    and all(t is not tensor for t in node.inputs[2:]):
                continue
            if is_quantizer(node):
                transparent = isinstance(quantizer_format(node)[0], (Fixed, UFixed))
            else:
                transparent = (node.domain or "") in ("", "ai.onnx") and node.op in _SIGN_TRANSPARENT
            if not transparent or subgraph_inputs(node) \
                    or not all(free(o, depth + 1) for o in node.outputs):
                ok = False
                break
        verdict[id(tensor)] = ok
        return ok

    return {n.outputs[0].name for n in graph.nodes if is_quantizer(n) and free(n.outputs[0])}
