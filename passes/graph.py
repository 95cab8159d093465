"""The one graph layer: every pass and every lowering rule works on an onnx-graphsurgeon graph.

A pipeline imports a ModelProto once (:func:`import_graph`), lets its passes edit the
``gs.Graph`` (nodes and tensors know their producers and consumers, so no pass builds an index of
its own), and exports once (:func:`export_model`). The export keeps what graphsurgeon does not
model from the source proto (metadata, functions, opset imports, initializers that double as
graph inputs) and keeps the source's order of initializers and value_info, so a pipeline that
changes nothing writes the same bytes and one that changes a few tensors writes a small diff:
a compressed model is reproducible byte for byte (thesis ch. 9 relies on re-running the flow).

Constants (initializers, ``Constant`` outputs and shape-only ops of them) are evaluated by
:mod:`ristretto_onnx.passes.constants`, re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx_graphsurgeon as gs
from onnx import GraphProto, ModelProto, NodeProto, OperatorSetIdProto, ValueInfoProto

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.constants import (  # noqa: F401  (re-exported: the graph layer's API)
    DEFAULT_DOMAINS, constant_value, elem_type, external_proto, static_shape,
)


def import_graph(model: ModelProto) -> gs.Graph:
    """The graphsurgeon graph of ``model``. Weights stay in ``model`` until a pass reads them.

    A node's ``overload`` (which function body a ``QuantizeSim`` runs) and ``doc_string`` ride
    along as attributes of the graphsurgeon node, which :func:`export_model` writes back.
    Graph inputs with an initializer default (``keep_initializers_as_inputs``) stay graph inputs,
    as :class:`gs.Constant` entries of ``graph.inputs`` (graphsurgeon would drop them).
    """
    graph = gs.import_onnx(model)
    # graphsurgeon keeps the model's opset_import field itself and appends to it on export.
    graph.import_domains = [OperatorSetIdProto(domain=o.domain, version=o.version)
                            for o in model.opset_import]
    for node, proto in zip(graph.nodes, model.graph.node):
        if proto.overload or proto.doc_string:
            node.overload, node.doc_string = proto.overload, proto.doc_string
    inits = {t.name for t in model.graph.initializer}
    if any(i.name in inits for i in model.graph.input):
        tensors = graph.tensors()
        graph.inputs = [tensors[i.name] for i in model.graph.input if i.name in tensors]
    return graph


def export_model(graph: gs.Graph, source: ModelProto, *, keep_order: bool = True) -> ModelProto:
    """``graph`` as a ModelProto with the model-level fields of ``source`` and, with
    ``keep_order``, its order of initializers and value_info (off for internal graphs)."""
    # graphsurgeon exports a constant read from the source by renaming the source's own
    # TensorProto (an attribute tensor gets "", a Constant node turned initializer its output's
    # name): remember the names and put them back, so the source is never modified.
    lazy = [v._values.tensor for v in _lazy_constants(graph)]
    names = [(t, t.HasField("name"), t.name) for t in lazy]
    unnamed = [(node, key) for node in graph.nodes for key, value in node.attrs.items()
               if isinstance(value, gs.Constant) and isinstance(value._values, gs.ir.tensor.LazyValues)
               and not value._values.tensor.HasField("name")]
    out = gs.export_onnx(graph, do_type_check=False)
    for tensor, had, name in names:
        if not had:
            tensor.ClearField("name")
        elif tensor.name != name:
            tensor.name = name
    unnamed_attrs = {(id(node), key) for node, key in unnamed}
    g = out.graph
    for node, proto in zip(graph.nodes, g.node):  # node fields graphsurgeon does not model
        if getattr(node, "overload", ""):
            proto.overload = node.overload
        if getattr(node, "doc_string", ""):
            proto.doc_string = node.doc_string
        if unnamed_attrs:
            for attr in proto.attribute:
                if (id(node), attr.name) in unnamed_attrs:
                    attr.t.ClearField("name")
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version",
                  "doc_string"):
        if source.HasField(field):
            setattr(out, field, getattr(source, field))
        else:
            out.ClearField(field)
    for field in ("opset_import", "metadata_props", "functions"):
        getattr(out, field).clear()
        getattr(out, field).extend(getattr(source, field))
    if keep_order:
        _keep_order(g.initializer, source.graph.initializer)
        _keep_order(g.value_info, source.graph.value_info)
    _restore_initializer_inputs(g, source.graph)
    return out


def _lazy_constants(graph: gs.Graph):
    """Constants whose values are still the source model's TensorProto (initializers and
    tensor attributes of the top-level graph)."""
    for value in graph.tensors().values():
        if isinstance(value, gs.Constant) and isinstance(value._values, gs.ir.tensor.LazyValues):
            yield value
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Constant) and isinstance(value._values, gs.ir.tensor.LazyValues):
                yield value


def _keep_order(items, like) -> None:
    """Sort ``items`` (a repeated proto field) by the position of their names in ``like``; new
    names follow in their current order."""
    rank = {t.name: i for i, t in enumerate(like)}
    if all(t.name in rank for t in items) and [t.name for t in items] == [t.name for t in like]:
        return
    ordered = sorted(items, key=lambda t: rank.get(t.name, len(rank)))
    kept = [type(t)() for t in ordered]
    for new, old in zip(kept, ordered):
        new.CopyFrom(old)
    del items[:]
    items.extend(kept)


def _restore_initializer_inputs(g: GraphProto, source: GraphProto) -> None:
    """Graph inputs with an initializer default keep their source ValueInfo (graphsurgeon writes
    a new one from the initializer's type)."""
    source_inits = {t.name for t in source.initializer}
    kept = {i.name: i for i in source.input if i.name in source_inits}
    for k, vi in enumerate(g.input):
        if vi.name in kept:
            g.input[k].CopyFrom(kept[vi.name])


# ---- questions every pass asks ----------------------------------------------------------------

def runtime_inputs(model: ModelProto | gs.Graph) -> list[str]:
    """Names of the graph inputs a caller must feed (those without an initializer default)."""
    if isinstance(model, gs.Graph):
        return [t.name for t in model.inputs if isinstance(t, gs.Variable)]
    return [i.name for i in runtime_input_infos(model)]


def runtime_input_infos(model: ModelProto | GraphProto) -> list[ValueInfoProto]:
    """The graph inputs a caller must feed, as the model declares them (type and shape)."""
    graph = model.graph if isinstance(model, ModelProto) else model
    inits = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in inits]


def subgraph_inputs(node: NodeProto | gs.Node) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read, at any depth."""
    names: set[str] = set()
    if isinstance(node, gs.Node):
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                for inner in value.nodes:
                    names.update(t.name for t in inner.inputs if t.name)
                    names |= subgraph_inputs(inner)
        return names
    for attr in node.attribute:
        for g in ([attr.g] if attr.HasField("g") else list(attr.graphs)):
            for inner in g.node:
                names.update(n for n in inner.input if n)
                names |= subgraph_inputs(inner)
    return names


def nodes_computing(model: ModelProto, targets: Iterable[str], available: Iterable[str] = ()) -> list[NodeProto]:
    """The nodes of ``model`` (in graph order) that compute ``targets`` from the ``available``
    tensors, the graph inputs and the initializers: the walk back from the targets that cuts a
    graph to what a few tensors need."""
    available = set(available)
    made = {o: i for i, n in enumerate(model.graph.node) for o in n.output if o}
    keep: set[int] = set()
    stack = [t for t in targets if t not in available]
    while stack:
        i = made.get(stack.pop())
        if i is None or i in keep:
            continue
        keep.add(i)
        node = model.graph.node[i]
        stack.extend(t for t in list(node.input) + sorted(subgraph_inputs(node)) if t and t not in available)
    return [n for i, n in enumerate(model.graph.node) if i in keep]


def is_op(node: gs.Node, op: str) -> bool:
    """``node`` is the default-domain op ``op``."""
    return node.op == op and (node.domain or "") in DEFAULT_DOMAINS


def output_names(graph: gs.Graph) -> set[str]:
    return {t.name for t in graph.outputs}


def sole_consumer(tensor: gs.Tensor, graph_outputs: set[str]) -> gs.Node | None:
    """The only node reading ``tensor``, if exactly one does and it is not a graph output."""
    users = tensor.outputs
    if len(users) == 1 and tensor.name not in graph_outputs:
        return users[0]
    return None


def consumer_lookup(graph: gs.Graph) -> Callable[[gs.Tensor], list[gs.Node]]:
    """``tensor -> readers``: the top-level nodes of ``graph`` that read a tensor, in graph order,
    once per input slot; a node whose subgraph (If/Loop/Scan body) reads the tensor from the outer
    scope counts once per such body (graphsurgeon itself lists the inner nodes as readers)."""
    bodies = {id(n): [_body_reads(v) for v in n.attrs.values() if isinstance(v, gs.Graph)]
              for n in graph.nodes}
    bodies = {k: v for k, v in bodies.items() if v}
    if not bodies:
        return lambda tensor: list(tensor.outputs)
    position = {id(n): i for i, n in enumerate(graph.nodes)}

    def readers(tensor: gs.Tensor) -> list[gs.Node]:
        direct = [n for n in tensor.outputs if id(n) in position]
        nested = [n for n in graph.nodes if id(n) in bodies
                  for reads in bodies[id(n)] if tensor.name in reads]
        return sorted(direct + nested, key=lambda n: position[id(n)])

    return readers


def sole_readers(graph: gs.Graph) -> dict[str, gs.Node]:
    """``{tensor name: node}`` for the tensors that exactly one top-level node reads, once
    (:func:`consumer_lookup`), and that are not graph outputs."""
    readers = consumer_lookup(graph)
    outputs = output_names(graph)
    out: dict[str, gs.Node] = {}
    for name, tensor in graph.tensors().items():
        users = readers(tensor)
        if len(users) == 1 and name not in outputs:
            out[name] = users[0]
    return out


def _body_reads(body: gs.Graph) -> set[str]:
    names = {t.name for t in body.outputs} | tensors_read(body.nodes)
    names.discard("")
    return names


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def as_graph(model: ModelProto | gs.Graph) -> gs.Graph:
    """``model`` if it is a graph already, else its imported graph (analyses take either)."""
    return model if isinstance(model, gs.Graph) else import_graph(model)


def tensor_names(graph: gs.Graph) -> set[str]:
    """Every tensor name in use at the top level (to make new names unique)."""
    names = set(graph.tensors())
    names.discard("")
    return names


def unique_name(stem: str, taken: set[str]) -> str:
    """``stem`` or ``stem_1``, ``stem_2`` ... whichever is not in ``taken``; adds it to ``taken``."""
    name, k = stem, 0
    while name in taken:
        k += 1
        name = f"{stem}_{k}"
    taken.add(name)
    return name


def remove_node(graph: gs.Graph, node: gs.Node) -> None:
    """Take ``node`` out of ``graph`` and of its tensors' producer/consumer lists."""
    remove_nodes(graph, [node])


def remove_nodes(graph: gs.Graph, nodes: Iterable[gs.Node]) -> None:
    """Take ``nodes`` out of ``graph`` and of their tensors' producer/consumer lists."""
    gone = set()
    for node in nodes:
        set_inputs(node, [])
        _unlink(node.outputs, "inputs", node)
        gone.add(id(node))
    graph.nodes = [n for n in graph.nodes if id(n) not in gone]


def set_inputs(node: gs.Node, tensors: Iterable[gs.Tensor]) -> None:
    """Make ``tensors`` the inputs of ``node``, keeping the tensors' consumer lists in step.

    graphsurgeon's own list operations find a node in a tensor's consumer list with
    ``Node.__eq__``, which compares structure; this finds it by identity (measured: the
    lowering's largest cost otherwise).
    """
    _unlink(node.inputs, "outputs", node)
    for t in tensors:
        list.append(node.inputs, t)
        list.append(t.outputs, node)


def _unlink(tensors: list, field: str, node: gs.Node) -> None:
    for t in tensors:
        users = getattr(t, field)
        for k, other in enumerate(users):
            if other is node:
                list.__delitem__(users, k)
                break
    list.clear(tensors)


def copy_graph(graph: gs.Graph) -> gs.Graph:
    """An independent copy of ``graph`` (constant values shared), node extras included;
    cheaper than importing the model again."""
    out = graph.copy()
    for node, new in zip(graph.nodes, out.nodes):
        if getattr(node, "overload", "") or getattr(node, "doc_string", ""):
            new.overload, new.doc_string = node.overload, node.doc_string
    return out


def tensors_read(nodes: Iterable[gs.Node]) -> set[str]:
    """Names read by ``nodes``, their subgraphs included."""
    used: set[str] = set()
    for node in nodes:
        used.update(t.name for t in node.inputs)
        used |= subgraph_inputs(node)
    return used


# ---- constants (passes.constants) and lookups by name -------------------------------------

def constant_lookup(model: ModelProto | gs.Graph):
    """``name -> value`` of the constant tensors of one graph (``None`` for other names)."""
    tensors = as_graph(model).tensors()
    memo: dict = {}

    def value(name: str) -> np.ndarray | None:
        tensor = tensors.get(name)
        return None if tensor is None else constant_value(tensor, memo)

    return value


def single_input(model: ModelProto | gs.Graph, what: str) -> str:
    """The name of the model's one runtime input; ``what`` (e.g. "compress") needs exactly one."""
    return _one(runtime_inputs(model), what)


def single_input_info(model: ModelProto, what: str) -> ValueInfoProto:
    """The model's one runtime input as it declares it (:func:`single_input`)."""
    infos = runtime_input_infos(model)
    _one([i.name for i in infos], what)
    return infos[0]


def _one(names: list[str], what: str) -> str:
    if len(names) != 1:
        raise RistrettoError(f"{what} needs a model with one input; this one has {len(names)}"
                             + (f": {', '.join(names)}" if names else ""))
    return names[0]
