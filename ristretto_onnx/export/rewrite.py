"""The one rewrite every model export does: replace each QuantizeSim node by other nodes.

An exporter supplies ``replace(quantizer, graph, taken) -> list of nodes | None`` (``None``: keep
the QuantizeSim node; ``[]``: the node disappears, e.g. because its output became an initializer).
:func:`rewrite_quantizers` copies the model, splices the new nodes in where the old one was (so the
graph stays topologically sorted), drops initializers nothing reads any more, and drops the slot
table (its slot nodes are gone). The simulated model itself is never modified.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import ModelProto, NodeProto

from ristretto_onnx.export.sim_graph import Quantizer, SimGraph
from ristretto_onnx.passes.slots import SLOTS_KEY, set_metadata

Replace = Callable[[Quantizer, onnx.GraphProto, set], "list[NodeProto] | None"]


def rewrite_quantizers(info: SimGraph, replace: Replace) -> tuple[ModelProto, list[str]]:
    """A copy of ``info.model`` with every QuantizeSim node replaced; also the ones kept."""
    out = ModelProto()
    out.CopyFrom(info.model)
    graph = out.graph
    taken = {n for node in graph.node for n in (*node.input, *node.output)}
    taken |= {t.name for t in graph.initializer} | {i.name for i in graph.input}
    replaced: dict[int, list[NodeProto]] = {}
    kept: list[str] = []
    for q in info.quantizers:
        nodes = replace(q, graph, taken)
        if nodes is None:
            kept.append(f"{q.node}: {q.format} ({q.rounding})")
        else:
            replaced[q.index] = nodes
    new_nodes: list[NodeProto] = []
    for i, node in enumerate(graph.node):
        new_nodes.extend(replaced.get(i, [node]))
    del graph.node[:]
    graph.node.extend(new_nodes)
    drop_unused_initializers(graph)
    drop_metadata(out, SLOTS_KEY)
    return out, kept


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    dropped = {t.name for t in graph.initializer} - {t.name for t in keep}
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)


def drop_metadata(model: ModelProto, key: str) -> None:
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    for k, v in keep:
        set_metadata(model, k, v)
