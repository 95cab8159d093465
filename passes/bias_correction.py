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
import onnx_graphsurgeon as gs
from onnx import ModelProto

from ristretto_onnx.formats import PerChannel
from ristretto_onnx.passes.contract import PassResult, Transformation
from ristretto_onnx.passes.external import row_blocks, tensor_array
from ristretto_onnx.passes.graph import (
    as_graph, constant_value, consumer_lookup, export_model, external_proto, import_graph, producer,
    tensor_names, unique_name,
)
from ristretto_onnx.passes.layers import Layer, group_id


def weight_error_means(model: ModelProto | gs.Graph, layers: Iterable[Layer], plan: Mapping[str, object],
                       means: Mapping[str, np.ndarray],
                       rounded: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """``{layer name: (W_q - W) E[x]}`` per output channel, for layers whose weights ``plan``
    quantizes and whose input mean is known (``W_q``: ``rounded[layer name]`` where given, e.g.
    ristretto_onnx.weight_rounding's, else the plan's format applied to ``W``)."""
    rounded = rounded or {}
    graph = as_graph(model)
    tensors = graph.tensors()
    out: dict[str, np.ndarray] = {}
    for layer in layers:
        fmt = plan.get(group_id(layer.name, "weights"))
        weight = tensors.get(layer.weight)
        on_disk = external_proto(weight) if weight is not None else None
        if fmt is not None and on_disk is not None and layer.name in means and layer.name not in rounded:
            delta = _output_error_in_chunks(layer, mac_node(graph, tensors, layer).attrs, on_disk, fmt,
                                            means[layer.name])
            if delta is not None:
                out[layer.name] = delta
            continue
        w = constant_value(weight) if weight is not None else None
        mean = means.get(layer.name)
        if fmt is None or w is None or mean is None:
            continue
        w = np.asarray(w, np.float32)
        q = rounded.get(layer.name)
        q = fmt.quantize(w) if q is None else q
        dw = np.asarray(q, np.float64) - w.astype(np.float64)
        delta = _output_error(layer, mac_node(graph, tensors, layer).attrs, dw, mean)
        if delta is not None:
            out[layer.name] = delta
    return out


def _output_error_in_chunks(layer: Layer, attrs: Mapping, t, fmt, mean: np.ndarray) -> np.ndarray | None:
    """:func:`_output_error` of a weight left on disk (passes.external), a chunk of rows at a time:
    the rows are output channels (Conv, Gemm with transB) or input channels (Gemm, MatMul)."""
    by_output = ((layer.op_type == "Conv" and int(attrs.get("group", 1)) == 1)
                 or (layer.op_type == "Gemm" and attrs.get("transB", 0)))
    by_input = layer.op_type in ("Gemm", "MatMul") and not attrs.get("transB", 0) and len(t.dims) == 2
    if isinstance(fmt, PerChannel) or not (by_output or by_input):
        w = np.asarray(tensor_array(t), np.float32)
        return _output_error(layer, attrs, fmt.quantize(w).astype(np.float64) - w.astype(np.float64), mean)
    parts = []
    for start, stop, rows in row_blocks(t):
        w = np.asarray(rows, np.float32)
        dw = fmt.quantize(w).astype(np.float64) - w.astype(np.float64)
        part = _output_error(layer, attrs, dw, mean if by_output else mean[start:stop])
        if part is None:
            return None
        parts.append(part)
    return np.concatenate(parts) if by_output else np.sum(parts, axis=0)


def _output_error(layer: Layer, attrs: Mapping, dw: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
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


def mac_node(graph: gs.Graph, tensors: Mapping[str, gs.Tensor], layer: Layer) -> gs.Node:
    """The layer's MAC node (in an annotated model its output feeds the output slot: found by
    name there)."""
    tensor = tensors.get(layer.node_output)
    node = producer(tensor) if tensor is not None else None
    if node is not None and node.op == layer.op_type:
        return node
    return next(n for n in graph.nodes if n.name == layer.node and n.op == layer.op_type)


class BiasCorrection(Transformation):
    """Lower each layer's bias by its ``delta`` (:func:`weight_error_means`); a Conv or Gemm
    without a bias gets one. A computed or shared bias is left alone."""

    name = "bias_correction"

    def __init__(self, layers: Iterable[Layer], deltas: Mapping[str, np.ndarray]) -> None:
        self.layers, self.deltas = tuple(layers), deltas

    def apply(self, graph: gs.Graph) -> PassResult:
        tensors = graph.tensors()
        readers = consumer_lookup(graph)
        taken = tensor_names(graph)
        changed = False
        for layer in self.layers:
            delta = self.deltas.get(layer.name)
            if delta is None:
                continue
            node = mac_node(graph, tensors, layer)
            if layer.bias is not None:
                bias = tensors.get(layer.bias)
                if not isinstance(bias, gs.Constant) or len(readers(bias)) != 1:
                    continue  # a computed or shared bias: leave it
                scale = 1.0
                if layer.op_type == "Gemm" and layer.bias_node_output is None:
                    scale = float(node.attrs.get("beta", 1.0))
                b = constant_value(bias).astype(np.float64)
                if b.shape != delta.shape and b.size != delta.size:
                    continue
                new = b - np.broadcast_to(delta / scale, b.shape)
                bias.values = new.reshape(b.shape).astype(np.float32)
                changed = True
            elif layer.op_type in ("Conv", "Gemm") and len(node.inputs) < 3:
                beta = float(node.attrs.get("beta", 1.0)) if layer.op_type == "Gemm" else 1.0
                name = unique_name(f"{layer.name}_bias_correction", taken)
                node.inputs.append(gs.Constant(name, (-delta / beta).astype(np.float32)))
                changed = True
        return PassResult(graph, changed)


def apply_bias_correction(model: ModelProto, layers: Iterable[Layer],
                          deltas: Mapping[str, np.ndarray]) -> ModelProto:
    """A copy of ``model`` (float or annotated: the same tensor names) with each layer's bias
    lowered by its ``delta`` (:class:`BiasCorrection`)."""
    graph = import_graph(model)
    if not BiasCorrection(layers, deltas)(graph).changed:
        out = ModelProto()
        out.CopyFrom(model)
        return out
    return export_model(graph, model)
