"""Bias correction: cancel each output channel's expected weight-quantization error in its bias.

Quantizing weights (thesis ch. 5-7) changes every output channel's expected value: with input
``x``, ``E[W_q x] - E[W x] = (W_q - W) E[x]``, a constant per output channel that rounding does
not average away (rounding errors of one channel's weights are fixed, not random, once the
weights are quantized). Following Nagel et al. 2019 ("Data-free quantization", sec. 4.2, its
empirical form), the mean ``E[x]`` of each layer input is measured per input channel on the
calibration data in the FP32 model (:mod:`ristretto_onnx.moments`), and the bias becomes ``b - (W_q - W) E[x]``. In hardware
this costs nothing: the bias is added in the accumulator, and it stays float (or is quantized
like any bias) in the simulated model.

For convolutions the mean is taken over images and positions; zero padding at the borders makes
the correction there approximate. Layers: Conv (any group count), Gemm (``transA=0``) and MatMul
with a 2-D weight; ConvTranspose is left alone. A layer without a bias gets one (Conv, Gemm).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from ristretto_onnx.formats import PerChannel
from ristretto_onnx.passes.external import is_external, row_chunks, tensor_array, tensor_rows

from ristretto_onnx.passes.analysis.proto_index import GraphIndex, unique_name
from ristretto_onnx.passes.layers import Layer, group_id


def weight_error_means(model: ModelProto, layers: Iterable[Layer], plan: Mapping[str, object],
                       means: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{layer name: (W_q - W) E[x]}`` per output channel, for layers whose weights ``plan``
    quantizes and whose input mean is known."""
    index = GraphIndex(model.graph)
    out: dict[str, np.ndarray] = {}
    for layer in layers:
        fmt = plan.get(group_id(layer.name, "weights"))
        on_disk = index.initializers.get(layer.weight)
        if fmt is not None and on_disk is not None and is_external(on_disk) and layer.name in means:
            delta = _output_error_in_chunks(layer, index, on_disk, fmt, means[layer.name])
            if delta is not None:
                out[layer.name] = delta
            continue
        w = index.constant_value(layer.weight)
        mean = means.get(layer.name)
        if fmt is None or w is None or mean is None:
            continue
        w = np.asarray(w, np.float32)
        dw = fmt.quantize(w).astype(np.float64) - w.astype(np.float64)
        delta = _output_error(layer, index, dw, mean)
        if delta is not None:
            out[layer.name] = delta
    return out


def _output_error_in_chunks(layer: Layer, index: GraphIndex, t, fmt, mean: np.ndarray) -> np.ndarray | None:
    """:func:`_output_error` of a weight left on disk (passes.external), a chunk of rows at a time:
    the rows are output channels (Conv, Gemm with transB) or input channels (Gemm, MatMul)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in _node(index, layer).attribute}
    by_output = ((layer.op_type == "Conv" and int(attrs.get("group", 1)) == 1)
                 or (layer.op_type == "Gemm" and attrs.get("transB", 0)))
    by_input = layer.op_type in ("Gemm", "MatMul") and not attrs.get("transB", 0) and len(t.dims) == 2
    if isinstance(fmt, PerChannel) or not (by_output or by_input):
        w = np.asarray(tensor_array(t), np.float32)
        return _output_error(layer, index, fmt.quantize(w).astype(np.float64) - w.astype(np.float64), mean)
    parts = []
    for start, stop in row_chunks(t):
        w = np.asarray(tensor_rows(t, start, stop), np.float32)
        dw = fmt.quantize(w).astype(np.float64) - w.astype(np.float64)
        part = _output_error(layer, index, dw, mean if by_output else mean[start:stop])
        if part is None:
            return None
        parts.append(part)
    return np.concatenate(parts) if by_output else np.sum(parts, axis=0)


def _output_error(layer: Layer, index: GraphIndex, dw: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    node = _node(index, layer)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if layer.op_type == "Conv":
        o, cg = dw.shape[0], dw.shape[1]
        groups = int(attrs.get("group", 1))
        per_group = dw.reshape(o, cg, -1).sum(axis=2)  # (O, C/g): sum over the kernel window
        m = mean.reshape(groups, cg)[np.arange(o) // (o // groups)]  # each output's group's inputs
        return (per_group * m).sum(axis=1)
    if layer.op_type == "Gemm":
        if attrs.get("transA", 0) or dw.ndim != 2:
            return None
        delta = dw @ mean if attrs.get("transB", 0) else mean @ dw
        return delta * float(attrs.get("alpha", 1.0))
    if layer.op_type == "MatMul" and dw.ndim == 2:
        return mean @ dw
    return None


def _node(index: GraphIndex, layer: Layer):
    """The MAC node (in an annotated model its output feeds the output slot: find it by name)."""
    node = index.producer.get(layer.node_output)
    if node is not None and node.op_type == layer.op_type:
        return node
    return next(n for n in index.graph.node if n.name == layer.node and n.op_type == layer.op_type)


def apply_bias_correction(model: ModelProto, layers: Iterable[Layer],
                          deltas: Mapping[str, np.ndarray]) -> ModelProto:
    """A copy of ``model`` (float or annotated: the same tensor names) with each layer's bias
    lowered by its ``delta``; a Conv or Gemm without a bias gets one."""
    out = ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(out.graph)
    inits = {t.name: t for t in out.graph.initializer}
    taken = index.all_tensor_names()
    for layer in layers:
        delta = deltas.get(layer.name)
        if delta is None:
            continue
        node = _node(index, layer)
        if layer.bias is not None:
            init = inits.get(layer.bias)
            if init is None or len(index.consumers_of(layer.bias)) != 1:
                continue  # a computed or shared bias: leave it
            scale = 1.0
            if layer.op_type == "Gemm" and layer.bias_node_output is None:
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                scale = float(attrs.get("beta", 1.0))
            b = tensor_array(init).astype(np.float64)
            new = (b - np.broadcast_to(delta / scale, b.shape) if b.shape == delta.shape or b.size == delta.size
                   else None)
            if new is None:
                continue
            init.CopyFrom(numpy_helper.from_array(new.reshape(b.shape).astype(np.float32), init.name))
        elif layer.op_type in ("Conv", "Gemm") and len(node.input) < 3:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            beta = float(attrs.get("beta", 1.0)) if layer.op_type == "Gemm" else 1.0
            name = unique_name(f"{layer.name}_bias_correction", taken)
            taken.add(name)
            out.graph.initializer.append(numpy_helper.from_array((-delta / beta).astype(np.float32), name))
            node.input.append(name)
    return out
