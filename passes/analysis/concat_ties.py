"""Which layer outputs must share one format because they land in one Concat (read-only analysis).

A fire module (SqueezeNet) or an inception module concatenates the outputs of parallel layers
along the channel axis. In hardware the concatenation is free only when the branches write into
one buffer, and one buffer has one number format: the branches' ``outputs`` groups must share
one fractional length, the one of the widest range among them (so no branch saturates more than
it would alone). Ristretto's per-layer formats cannot express that, so this module finds the tie
once from the graph; the range step applies it (:func:`ristretto_onnx.ranges.tie_ranges`).

A layer output feeds a Concat directly or through ops that keep the shape and are applied
elementwise after the output quantizer (``Relu``, ``Clip``/ReLU6, ``Identity``, ``Dropout``): the values
in the buffer are then still on the quantized output's grid. Concats of Concats (an inception
module feeding another Concat directly) merge into one tie.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx_graphsurgeon as gs
from onnx import ModelProto

from ristretto_onnx.passes.graph import DEFAULT_DOMAINS, as_graph, is_op, producer
from ristretto_onnx.passes.layers import Layer, group_id

#: Elementwise, shape-preserving ops that keep values on the grid of their (quantized) input:
#: looking through them from a Concat input reaches the layer output that fills the buffer.
PASS_THROUGH_OPS = frozenset({"Relu", "Clip", "Identity", "Dropout"})


def concat_ties(model: ModelProto | gs.Graph, layers: Iterable[Layer]) -> dict[str, tuple[str, ...]]:
    """``{outputs group id: all outputs group ids tied with it}`` for every Concat of layer outputs.

    Only groups with at least one partner appear; each tie tuple is in graph order and shared by
    all its members. ``model`` is the float model the layers were found on.
    """
    layers = list(layers)
    graph = as_graph(model)
    by_output = {layer.output: layer for layer in layers}
    ties: list[list[str]] = []
    member_of: dict[str, int] = {}
    for node in graph.nodes:
        if not is_op(node, "Concat"):
            continue
        groups = [g for t in node.inputs if t.name for g in _sources(t, by_output)]
        groups = list(dict.fromkeys(groups))
        if len(groups) < 2:
            continue
        # Merge with any tie one of these groups already belongs to.
        joined = sorted({member_of[g] for g in groups if g in member_of})
        target = joined[0] if joined else len(ties)
        if not joined:
            ties.append([])
        for other in joined[1:]:
            ties[target].extend(ties[other])
            for g in ties[other]:
                member_of[g] = target
            ties[other] = []
        for g in groups:
            if g not in ties[target]:
                ties[target].append(g)
            member_of[g] = target
    order = {group_id(layer.name, "outputs"): i for i, layer in enumerate(layers)}
    out: dict[str, tuple[str, ...]] = {}
    for tie in ties:
        if len(tie) < 2:
            continue
        members = tuple(sorted(tie, key=lambda g: order.get(g, len(order))))
        out.update({g: members for g in members})
    return out


def _sources(tensor: gs.Tensor, by_output: dict[str, Layer]) -> list[str]:
    """The outputs groups whose values fill ``tensor`` (one Concat input), looking upstream
    through pass-through ops and nested Concats."""
    seen: set[str] = set()
    found: list[str] = []
    stack = [tensor]
    while stack:
        t = stack.pop()
        if t.name in seen:
            continue
        seen.add(t.name)
        layer = by_output.get(t.name)
        if layer is not None:
            found.append(group_id(layer.name, "outputs"))
            continue
        node = producer(t)
        if node is None or (node.domain or "") not in DEFAULT_DOMAINS:
            continue
        if node.op in PASS_THROUGH_OPS and node.inputs:
            stack.append(node.inputs[0])
        elif node.op == "Concat":
            stack.extend(reversed([i for i in node.inputs if i.name]))
    return found
