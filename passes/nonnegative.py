"""Layer inputs and outputs that cannot be negative (read-only analysis, for unsigned formats).

The thesis's dynamic fixed point is two's complement everywhere (ch. 5), so a tensor after a
ReLU spends its sign bit on values that never occur. ``ufixed:B:F`` (:class:`~ristretto_onnx.
formats.UFixed`) spends it on range instead; the schemes choose it for the groups found here:

* a layer **input** that is provably non-negative: written by Relu, Clip(lo >= 0), Softmax,
  Sigmoid, ... or by a sign-preserving op (pooling, Concat, reshapes, Add/Mul/Min of
  non-negative tensors) of such tensors, or a network input whose preprocessing keeps the sign
  of raw pixels (:func:`input_is_nonnegative`);
* a layer **output** that is non-negative by the same rule, or whose every reader is a Relu or
  a Clip with a constant lower bound >= 0: its negative values are discarded by that reader, so
  an unsigned format (negatives saturate to 0) computes exactly what the float graph does after
  it. Such outputs are measured after the ReLU (:func:`relu_measure`), where their range is.

Layer outputs that share one Concat buffer share one format: a tie is unsigned only when all
of its members are (:func:`unsigned_groups`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import numpy as np
import onnx_graphsurgeon as gs
from onnx import ModelProto

from ristretto_onnx.passes.analysis.concat_ties import concat_ties
from ristretto_onnx.passes.graph import (
    DEFAULT_DOMAINS, as_graph, constant_value, consumer_lookup, is_op, output_names, runtime_inputs,
    sole_readers,
)
from ristretto_onnx.passes.layers import Layer, group_id

#: Ops whose output is never negative, whatever their input.
_NONNEG_OPS = frozenset({"Relu", "Softmax", "Sigmoid", "Abs", "Exp", "Softplus", "HardSigmoid",
                         "Shape", "Size"})
#: Ops whose output is non-negative when every (data) input is.
_SIGN_KEEPING = frozenset({
    "Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split",
    "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Pad", "Resize",
    "Upsample", "Add", "Mul", "Min", "Dropout", "Tile", "Expand", "DepthToSpace", "SpaceToDepth",
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "Sqrt", "Div", "LRN", "Gather",
})
#: Inputs of these ops that are shapes/indices/pads, not data (they do not decide the sign).
_DATA_INPUTS = {"Reshape": 1, "Slice": 1, "Split": 1, "Pad": 1, "Resize": 1, "Upsample": 1,
                "Tile": 1, "Expand": 1, "Squeeze": 1, "Unsqueeze": 1, "Dropout": 1, "Gather": 1,
                "ReduceMean": 1, "ReduceMax": 1, "ReduceMin": 1, "ReduceSum": 1}


def nonnegative_tensors(model: ModelProto | gs.Graph, inputs: Collection[str] = ()) -> set[str]:
    """Tensor names that cannot be negative, given that the graph inputs ``inputs`` cannot."""
    graph = as_graph(model)
    memo: dict = {}
    known: set[str] = set(inputs)

    def nonneg(tensor: gs.Tensor) -> bool:
        if tensor.name in known:
            return True
        value = constant_value(tensor, memo)
        return value is not None and value.size > 0 and bool(np.all(np.asarray(value) >= 0))

    for node in graph.nodes:  # ONNX graphs are topologically sorted
        if (node.domain or "") not in DEFAULT_DOMAINS:
            continue
        op, ins = node.op, node.inputs
        if op in _NONNEG_OPS:
            ok = True
        elif op == "Clip":
            lo = _constant_scalar(node, 1, memo)
            ok = (lo is not None and lo >= 0) or nonneg(ins[0])
        elif op == "Max":
            ok = any(nonneg(t) for t in ins if t.name)
        elif op == "Pad":
            pad_value = _constant_scalar(node, 2, memo)
            ok = nonneg(ins[0]) and (pad_value is None or pad_value >= 0)
        elif op in _SIGN_KEEPING:
            data = ins[:_DATA_INPUTS.get(op, len(ins))]
            ok = all(nonneg(t) for t in data if t.name)
        else:
            ok = False
        if ok:
            known.update(t.name for t in (node.outputs if op == "Split" else node.outputs[:1]) if t.name)
    return known


def _constant_scalar(node: gs.Node, i: int, memo: dict | None = None) -> float | None:
    """Input ``i`` of ``node`` as a float when it is a one-element constant."""
    tensor = node.inputs[i] if len(node.inputs) > i else None
    if tensor is None or not tensor.name:
        return None
    v = constant_value(tensor, memo)
    return None if v is None or v.size != 1 else float(np.asarray(v).ravel()[0])


def discards_negatives(node: gs.Node) -> bool:
    """``node`` is a Relu or a Clip with a constant lower bound >= 0."""
    if is_op(node, "Relu"):
        return True
    if is_op(node, "Clip"):
        lo = _constant_scalar(node, 1)
        return lo is not None and lo >= 0
    return False


def unsigned_groups(model: ModelProto | gs.Graph, layers: Iterable[Layer], *,
                    inputs: Collection[str] = (),
                    ties: Mapping[str, tuple[str, ...]] | None = None) -> frozenset[str]:
    """Group ids (``<layer>/inputs``, ``<layer>/outputs``) that may take an unsigned format."""
    graph = as_graph(model)
    known = nonnegative_tensors(graph, inputs)
    readers = consumer_lookup(graph)
    tensors = graph.tensors()
    graph_outputs = output_names(graph)
    out: set[str] = set()
    for layer in layers:
        if layer.input in known:
            out.add(group_id(layer.name, "inputs"))
        tensor = tensors.get(layer.output)
        users = readers(tensor) if tensor is not None else []
        if layer.output in known or (layer.output not in graph_outputs and users
                                     and all(discards_negatives(n) for n in users)):
            out.add(group_id(layer.name, "outputs"))
    for gid, members in (ties or {}).items():
        tie = set(members) | {gid}
        if not tie <= out:
            out -= tie
    return frozenset(out)


def relu_measure(model: ModelProto | gs.Graph, layers: Iterable[Layer]) -> dict[str, str]:
    """``{outputs group id: Relu output}`` for layer outputs read only by one Relu: their range
    as an unsigned group is the range after the ReLU."""
    sole = sole_readers(as_graph(model))
    out: dict[str, str] = {}
    for layer in layers:
        node = sole.get(layer.output)
        if node is not None and is_op(node, "Relu"):
            out[group_id(layer.name, "outputs")] = node.outputs[0].name
    return out


def input_is_nonnegative(dataset) -> bool:
    """Whether ``dataset``'s model inputs cannot be negative: raw uint8 pixels mapped by a
    sign-preserving preprocessing (scale > 0, mean <= 0, std > 0), e.g. MNIST's ``x/255``."""
    pre = getattr(dataset, "preprocess", None)
    if pre is None:
        return False
    images = getattr(dataset, "images", None)
    raw_uint8 = getattr(images, "dtype", None) == np.uint8 or type(dataset).__name__ == "FolderDataset"
    return (raw_uint8 and (pre.scale is None or pre.scale > 0)
            and (pre.mean is None or all(m <= 0 for m in pre.mean))
            and (pre.std is None or all(s > 0 for s in pre.std)))


def unsigned_for(model: ModelProto | gs.Graph, layers: Iterable[Layer], dataset) -> frozenset[str]:
    """:func:`unsigned_groups` with the network input non-negative when ``dataset``'s
    preprocessing proves it (:func:`input_is_nonnegative`) and Concat ties respected."""
    layers, graph = list(layers), as_graph(model)
    inputs = runtime_inputs(graph) if input_is_nonnegative(dataset) else []
    return unsigned_groups(graph, layers, inputs=inputs, ties=concat_ties(graph, layers))
