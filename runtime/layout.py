"""Keep elementwise ops in onnxruntime's blocked NCHWc layout.

On x86, onnxruntime rewrites convolutions to ``com.microsoft.nchwc`` kernels that keep tensors
in a channel-blocked layout, and converts back to NCHW (``ReorderOutput``) before any op its
layout pass does not know, converting again (``ReorderInput``) before the next convolution.
FP32 CNNs rarely hit that: ReLU and residual adds are fused into the convolutions. A simulated
model hits it at every quantizer, because ``Round`` is not on the pass's list, so every
quantization point pays two full copies of the tensor.

Elementwise ops do not care about layout, so this pass, run on the graph onnxruntime produced,
lets them consume and produce the blocked tensors directly and drops the pairs of conversions
that become useless. A tensor still read in NCHW somewhere (a Slice, a graph output) gets one
``ReorderOutput`` where it is needed. The arithmetic is untouched: the same kernels run on the
same numbers, only their order in memory differs.

Only ops whose result for an element depends on that element alone (and on scalar parameters)
are moved, and binary ops only when both operands have the same static NCHW shape, so no
broadcast ever sees the blocked layout. Ops that could turn the zero channel padding of a
blocked tensor into inf or NaN (``Div``, ``Log``, ...) are not moved.

This pass is the one rewrite that stays on the raw ModelProto instead of the graph layer
(:mod:`ristretto_onnx.passes.graph`): it runs at every session build on onnxruntime's optimized
graph, and a graphsurgeon import and export of that graph alone costs 14.6 ms of CPU on
ResNet-20, against 2.7 ms for this whole pass and 36 ms for the session build (process CPU
time, best of 5, on 2 shared cores): a plan that needs a new session would pay a
third more.
"""

from __future__ import annotations

import onnx
from onnx import ModelProto, NodeProto, helper

from ristretto_onnx.passes.graph import subgraph_inputs

NCHWC_DOMAIN = "com.microsoft.nchwc"

#: Layout-agnostic ops (per element, scalar parameters), whose value at 0 is finite.
ELEMENTWISE = frozenset({
    "Abs", "Add", "Cast", "Ceil", "Clip", "DequantizeLinear", "Equal", "Floor", "Greater",
    "GreaterOrEqual", "Identity", "Less", "LessOrEqual", "Max", "Min", "Mul", "Neg", "QuantizeLinear",
    "Relu", "Round", "Sign", "Sub", "Where",
})

Shape = tuple


def _elementwise(node: NodeProto) -> bool:
    """Standard elementwise ops, and QuantizeSim kernels (and chains) of scalar formats (0 stays 0)."""
    if node.domain == "ai.ristretto" and node.op_type in ("QuantizeSim", "QuantizeSimChain"):
        return not any(a.name == "axis" for a in node.attribute)
    return node.domain in ("", "ai.onnx") and node.op_type in ELEMENTWISE


def static_shapes(model: ModelProto) -> dict[str, Shape]:
    """Static 4-D shapes ``(batch, C, H, W)`` of the model's tensors, by name (batch may be a name).

    Used to prove that a binary op does not broadcast; tensors whose shape inference does not
    give a static C, H and W are simply absent.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - no shapes just means fewer ops are moved
        return {}
    shapes: dict[str, Shape] = {}
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    for vi in values:
        t = vi.type.tensor_type
        if not t.HasField("shape") or len(t.shape.dim) != 4:
            continue
        dims = t.shape.dim
        if not all(d.HasField("dim_value") for d in dims[1:]):
            continue
        batch = dims[0].dim_value if dims[0].HasField("dim_value") else (dims[0].dim_param or None)
        if batch is None:
            continue
        shapes[vi.name] = (batch,) + tuple(d.dim_value for d in dims[1:])
    return shapes


def _scalar_names(graph: onnx.GraphProto) -> set[str]:
    """Initializers and graph inputs that hold exactly one element."""
    names = set()
    for init in graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        if n == 1:
            names.add(init.name)
    for vi in graph.input:
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") and d.dim_value == 1 for d in t.shape.dim):
            names.add(vi.name)
    return names


def keep_blocked_layout(model: ModelProto, shapes: dict[str, Shape] | None = None) -> ModelProto | None:
    """A copy of onnxruntime's optimized ``model`` with elementwise ops kept in NCHWc.

    ``shapes`` (from :func:`static_shapes` of the model before optimization) lets binary ops
    move too. Returns ``None`` when there is nothing to change.
    """
    shapes = shapes or {}
    out = ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    scalars = _scalar_names(graph)
    graph_outputs = {o.name for o in graph.output}

    # NCHW name -> (blocked name, ReorderOutput attributes, shape key)
    blocked: dict[str, tuple[str, dict, object]] = {}
    materialized: set[str] = set()
    nodes: list[NodeProto] = []
    alias: dict[str, str] = {}
    moved = 0

    def materialize(name: str) -> None:
        if name in blocked and name not in materialized:
            src, attrs, _ = blocked[name]
            nodes.append(helper.make_node("ReorderOutput", [src], [name], domain=NCHWC_DOMAIN, **attrs))
            materialized.add(name)

    for node in graph.node:
        if node.domain == NCHWC_DOMAIN and node.op_type == "ReorderOutput":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if not attrs.get("channels_last", 0):
                name = node.output[0]
                blocked[name] = (node.input[0], attrs, shapes.get(name, ("root", name)))
                continue
        if node.domain == NCHWC_DOMAIN and node.op_type == "ReorderInput" and node.input[0] in blocked:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if not attrs.get("channels_last", 0):
                alias[node.output[0]] = blocked[node.input[0]][0]
                moved += 1
                continue
        if _elementwise(node) and node.input and not subgraph_inputs(node):
            data = [i for i in node.input if i and i not in scalars]
            keys = {blocked[d][2] for d in data if d in blocked}
            if data and all(d in blocked for d in data) and len(keys) == 1 and all(node.output):
                src_attrs = blocked[data[0]][1]
                key = next(iter(keys))
                new = NodeProto()
                new.CopyFrom(node)
                for k, name in enumerate(new.input):
                    if name in blocked:
                        new.input[k] = blocked[name][0]
                for k, name in enumerate(node.output):  # a chain's second output has the same shape
                    new.output[k] = f"{name}__nchwc"
                    blocked[name] = (new.output[k], src_attrs, shapes.get(name, key))
                nodes.append(new)
                moved += 1
                continue
        for name in list(node.input) + sorted(subgraph_inputs(node)):
            materialize(name)
        nodes.append(node)
    for name in graph_outputs:
        materialize(name)
    if moved == 0:
        return None
    for node in nodes:
        for k, name in enumerate(node.input):
            if name in alias:
                node.input[k] = alias[name]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # shapes of renamed tensors are stale; onnxruntime infers its own
    return out
