"""An independent count of MACs and weight memory, from ONNX shape inference on the graph itself.

Deliberately shares nothing with the report's code: it walks the graph's Conv, ConvTranspose,
Gemm and MatMul nodes, reads their attributes and the shapes ONNX shape inference gives, and
takes each weight's width from the QuantizeSim node that reads that initializer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    inferred = shape_inference.infer_shapes(model)
    out = {t.name: list(t.dims) for t in inferred.graph.initializer}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return out


def macs_per_image(float_model: onnx.ModelProto) -> int:
    """Sum over MAC nodes with a weight initializer: products per image (the batch dim dropped)."""
    shapes = _shapes(float_model)
    inits = {t.name for t in float_model.graph.initializer}
    total = 0
    for node in float_model.graph.node:
        if node.op_type not in MAC_OPS or node.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = shapes[node.input[1]]
        out = shapes[node.output[0]]
        per_image_out = int(np.prod(out[1:]))
        if node.op_type == "Conv":
            total += per_image_out * int(np.prod(w[1:]))              # (Cin / group) * kh * kw
        elif node.op_type == "ConvTranspose":
            total += int(np.prod(shapes[node.input[0]][1:])) * int(np.prod(w[1:]))
        elif node.op_type == "Gemm":
            k = w[1] if attrs.get("transB", 0) else w[0]
            total += per_image_out * k
        else:  # MatMul x @ W: K is W's second-to-last dim
            total += per_image_out * w[-2]
    return total


def weight_bits(float_model: onnx.ModelProto, sim: onnx.ModelProto) -> int:
    """Sum of weight elements times the width of the QuantizeSim reading them (32 when float)."""
    from ristretto_onnx.formats import parse_format

    bits_of = {}
    for node in sim.graph.node:
        if node.op_type == "QuantizeSim":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            bits_of[node.input[0]] = parse_format(attrs["format"].decode(), axis=attrs.get("axis")).bits
    sim_inits = {t.name: numpy_helper.to_array(t).size for t in sim.graph.initializer}
    inits = {t.name for t in float_model.graph.initializer}
    total = 0
    for node in float_model.graph.node:
        if node.op_type in MAC_OPS and node.input[1] in inits:
            total += sim_inits[node.input[1]] * bits_of.get(node.input[1], 32)
    return total
