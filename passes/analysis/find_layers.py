"""Find the quantizable layers of a model (read-only analysis).

A quantizable layer is a Conv, ConvTranspose, Gemm or MatMul that multiplies a runtime tensor (the
layer input) with a constant one (the weights): the multiply-accumulate units of fig. 2.9.
Weights may be initializers (also ones listed as graph inputs), ``Constant`` outputs, or a
Transpose/Cast/Reshape of those, which is how exporters write shared or tied weights. A MatMul of
two runtime tensors (attention scores), or a layer whose weights are a true runtime input, has no
parameters to quantize and is reported as skipped, not as an error.

The bias is the Conv/Gemm bias input or, for MatMul (and bias-less Gemm/Conv), the constant of an
``Add`` that is the MAC output's sole consumer and adds one value per output channel; the layer
output is then the ``Add``'s output, so the output quantizer sees ``W x + b`` as in hardware.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import ModelProto, TensorProto, helper

from ristretto_onnx.passes.graph import (
    DEFAULT_DOMAINS, as_graph, constant_value, elem_type, external_proto, output_names, sole_consumer,
    static_shape, unique_name,
)
from ristretto_onnx.passes.layers import KIND_OF_OP, Layer, LayerSet, SkippedNode


def find_layers(model: ModelProto | gs.Graph) -> LayerSet:
    """The quantizable layers of ``model`` in graph order (see the module docstring)."""
    graph = as_graph(model)
    memo: dict = {}
    outputs = output_names(graph)
    taken: set[str] = set()
    layers: list[Layer] = []
    skipped: list[SkippedNode] = []
    for node in graph.nodes:
        if node.op not in KIND_OF_OP or (node.domain or "") not in DEFAULT_DOMAINS:
            continue
        found = _layer_of(node, taken, memo, outputs)
        if isinstance(found, Layer):
            layers.append(found)
        else:
            skipped.append(SkippedNode(node.name, node.op, found))
    return LayerSet(tuple(layers), tuple(skipped))


_NONE = gs.Variable.empty()


def _layer_of(node: gs.Node, taken: set[str], memo: dict, outputs: set[str]) -> Layer | str:
    """The layer a MAC node forms, or the reason it is not one."""
    op = node.op
    attrs = node.attrs
    ins = list(node.inputs) + [_NONE] * (3 - len(node.inputs))

    def is_constant(t: gs.Tensor) -> bool:
        # a constant's value is not read (a weight left on disk stays there, passes.external)
        return bool(t.name) and (isinstance(t, gs.Constant) or constant_value(t, memo) is not None)

    if op in ("Gemm", "MatMul"):
        const = [is_constant(ins[i]) for i in (0, 1)]
        if const[0] and const[1]:
            return "both operands are constant (fold constants first)"
        if not const[0] and not const[1]:
            return "no constant weight operand (both operands are computed at run time)"
        w_idx = 1 if const[1] else 0
    else:
        if not is_constant(ins[1]):
            return "the weights are not constant (a runtime input)"
        if is_constant(ins[0]):
            return "the input is constant (fold constants first)"
        w_idx = 1
    x_idx = 1 - w_idx
    x, w_t, out_t = ins[x_idx], ins[w_idx], node.outputs[0]
    for t in (x, w_t, out_t):
        dtype = elem_type(t, memo)
        if dtype is not None and dtype != TensorProto.FLOAT:
            return f"tensor {t.name!r} is {helper.tensor_dtype_to_np_dtype(dtype)}, not float32"
    on_disk = external_proto(w_t)  # only the shape is needed: a weight on disk stays there
    w = np.broadcast_to(np.float32(0), tuple(on_disk.dims)) if on_disk is not None else constant_value(w_t, memo)
    if w.ndim < 2:
        return f"weights {w_t.name!r} have rank {w.ndim}"
    out_axis, n_out, out_axis_in_output = _output_channels(op, attrs, w, w_idx)

    bias: str | None = None
    output = out_t.name
    bias_node_output: str | None = None
    if op in ("Conv", "ConvTranspose", "Gemm") and ins[2].name:
        if is_constant(ins[2]):
            bias = ins[2].name
    else:
        add = _bias_add(out_t, n_out, out_axis_in_output, memo, outputs)
        if add is not None:
            add_node, bias = add
            output = bias_node_output = add_node.outputs[0].name
    return Layer(
        name=unique_name(_clean_name(node, w_t.name), taken),
        op_type=op,
        kind=KIND_OF_OP[op],
        node=node.name,
        node_output=out_t.name,
        input=x.name,
        weight=w_t.name,
        bias=bias,
        output=output,
        weight_shape=tuple(int(d) for d in w.shape),
        out_channel_axis=out_axis,
        bias_node_output=bias_node_output,
    )


def _output_channels(op: str, attrs: dict, w, w_idx: int) -> tuple[int | None, int, int]:
    """(weight axis of the output channels or None, number of output channels, output axis).

    The output axis counts from the right (numpy broadcasting), so a bias Add can be checked
    without knowing the output's rank.
    """
    if op == "Conv":
        return 0, w.shape[0], -(w.ndim - 1)
    if op == "ConvTranspose":
        group = attrs.get("group", 1)
        return (1 if group == 1 else None), w.shape[1] * group, -(w.ndim - 1)
    if op == "Gemm":
        if w_idx == 1:
            axis = 0 if attrs.get("transB", 0) else 1
            return axis, w.shape[axis], -1
        axis = 1 if attrs.get("transA", 0) else 0
        return axis, w.shape[axis], -2
    # MatMul: x @ W (output channels on W's last axis) or W @ x (on W's second-to-last)
    if w_idx == 1:
        return w.ndim - 1, w.shape[-1], -1
    return w.ndim - 2, w.shape[-2], -2


def _bias_add(mac_out: gs.Tensor, n_out: int, axis_from_right: int, memo: dict,
              outputs: set[str]):
    """``(add_node, bias_name)`` when ``mac_out`` flows only into ``Add(mac_out, per-channel const)``."""
    add = sole_consumer(mac_out, outputs)
    if add is None or add.op != "Add" or (add.domain or "") not in DEFAULT_DOMAINS \
            or len(add.inputs) != 2:
        return None
    other = add.inputs[1] if add.inputs[0] is mac_out else add.inputs[0]
    if other is mac_out:
        return None
    value = constant_value(other, memo)
    if value is None or value.dtype.kind != "f" or elem_type(other, memo) != TensorProto.FLOAT:
        return None
    if value.size != 1:
        if value.size != n_out or value.ndim < -axis_from_right or value.shape[axis_from_right] != n_out:
            return None
    mac_shape, add_shape = static_shape(mac_out, memo), static_shape(add.outputs[0], memo)
    if value.ndim > (len(mac_shape) if mac_shape is not None else value.ndim):
        return None  # the Add would broadcast the output to a higher rank: not a bias
    if mac_shape is not None and add_shape is not None and len(mac_shape) != len(add_shape):
        return None
    return add, other.name


_WEIGHT_SUFFIXES = (".weight", "_weight", "/weight", ".W", "_W")


def _clean_name(node: gs.Node, weight: str) -> str:
    """A readable layer name: ``/layer1/layer1.0/conv1/Conv`` -> ``layer1/layer1.0/conv1``."""
    name = node.name.strip()
    if name.startswith("/"):  # the PyTorch exporter's module path, ending in /OpType or /OpType_3
        parts = [p for p in name.split("/") if p]
        if len(parts) > 1 and parts[-1].split("_")[0] == node.op:
            parts = parts[:-1]
        name = "/".join(parts)
    if not name:
        stem = weight.strip("/")
        for suffix in _WEIGHT_SUFFIXES:
            if stem.endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
                break
        name = stem or node.outputs[0].name or node.op.lower()
    return name
