"""Layer inputs that read another layer's quantized output unchanged (read-only analysis).

In the thesis's data path (fig. 2.9/2.10) a layer output is quantized, and the next layer's
input is quantized again. When only ops that keep every value on the output's grid lie between
them (ReLU, max pooling, reshapes, a Concat of outputs that share one format), the second
quantizer can only lose information if it has another format: dynamic fixed point gives layer
outputs one integer bit fewer (eq. 5.2's variant), so the input rounds the same values again on
a coarser grid. Giving such an input its source output's format makes the second quantizer an
exact no-op: every value is rounded once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import onnx_graphsurgeon as gs
from onnx import ModelProto

from ristretto_onnx.passes.graph import DEFAULT_DOMAINS, as_graph, producer
from ristretto_onnx.passes.layers import Layer, group_id

#: Single-data-input ops whose outputs are values of their input (or 0, which every grid holds).
GRID_KEEPING = frozenset({"Relu", "MaxPool", "GlobalMaxPool", "Flatten", "Reshape", "Squeeze",
                           "Unsqueeze", "Transpose", "Identity", "Dropout", "Slice", "Split",
                           "DepthToSpace", "SpaceToDepth"})


def carried_input(tensor: gs.Tensor) -> gs.Tensor | None:
    """The input whose values ``tensor`` carries, when ``tensor`` is the data output of a
    :data:`GRID_KEEPING` op (every value of it is a value of that input, or 0); else None. Not
    the second outputs (MaxPool's indices, Dropout's mask) nor a Dropout told to train."""
    node = producer(tensor)
    if node is None or (node.domain or "") not in DEFAULT_DOMAINS or node.op not in GRID_KEEPING \
            or not node.inputs:
        return None
    if not (node.op == "Split" or tensor is node.outputs[0]):
        return None
    if node.op == "Dropout" and len(node.inputs) > 2:  # training_mode given: may drop
        return None
    return node.inputs[0]


def grid_sources(model: ModelProto | gs.Graph, layers: Iterable[Layer]) -> dict[str, str]:
    """``{inputs group id: outputs group id}`` for layer inputs whose values are a layer
    output's values (see the module docstring); a Concat maps to the first of its sources."""
    layers = list(layers)
    tensors = as_graph(model).tensors()
    by_output = {l.output: l for l in layers}

    def source(tensor: gs.Tensor, depth: int = 0) -> str | None:
        if tensor.name in by_output:
            return group_id(by_output[tensor.name].name, "outputs")
        if depth > 64:
            return None
        carried = carried_input(tensor)
        if carried is not None:
            return source(carried, depth + 1)
        node = producer(tensor)
        if node is None or (node.domain or "") not in DEFAULT_DOMAINS:
            return None
        if node.op == "Concat":
            found = [source(t, depth + 1) for t in node.inputs]
            return found[0] if found and all(found) else None
        return None

    out: dict[str, str] = {}
    for layer in layers:
        src = source(tensors[layer.input]) if layer.input in tensors else None
        if src is not None:
            out[group_id(layer.name, "inputs")] = src
    return out


def round_once(plan: Mapping[str, object], sources: Mapping[str, str],
               ties: Mapping[str, tuple[str, ...]] | None = None) -> dict:
    """``plan`` with each input in ``sources`` given its source output's format (both quantized;
    a Concat's sources all sharing that format)."""
    out = dict(plan)
    for gid, src in sources.items():
        fmt = plan.get(src)
        if fmt is None or plan.get(gid) is None:
            continue
        members = (ties or {}).get(src, (src,))
        if all(plan.get(m) == fmt for m in members):
            out[gid] = fmt
    return out
