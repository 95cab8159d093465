"""The one graph layer: every pass and every lowering rule works on an onnx-graphsurgeon graph.

A pipeline imports a ModelProto once (:func:`import_graph`), lets its passes edit the
``gs.Graph`` (nodes and tensors know their producers and consumers, so no pass builds an index of
its own), and exports once (:func:`export_model`). The export keeps what graphsurgeon does not
model from the source proto (metadata, functions, opset imports, initializers that double as
graph inputs) and keeps the source's order of initializers and value_info, so a pipeline that
changes nothing writes the same bytes and one that changes a few tensors writes a small diff:
a compressed model is reproducible byte for byte (thesis ch. 9 relies on re-running the flow).

A tensor is *constant* (:func:`constant_value`) when its value is fixed once the model is
loaded: an initializer, a ``Constant`` node's output, or a shape-only or type-only op
(``Transpose``, ``Cast``, ``Reshape`` ...) applied to constants, which is how exporters write
shared or tied weights. A runtime graph input is never constant.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import dtype_to_onnx
from ristretto_onnx.errors import RistrettoError
from onnx import GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, helper

from ristretto_onnx.passes.external import is_external, tensor_array

DEFAULT_DOMAINS = ("", "ai.onnx")

#: Ops through which a constant stays constant and whose numpy evaluation is trivial.
_FOLDABLE_OPS = frozenset({"Constant", "Identity", "Transpose", "Cast", "Reshape", "Squeeze",
                           "Unsqueeze", "Flatten"})


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
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in inits]


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


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


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


# ---- constants --------------------------------------------------------------------------------

def constant_value(tensor: gs.Tensor, memo: dict | None = None) -> np.ndarray | None:
    """The value of a constant tensor (see the module docstring), else ``None``.

    ``memo`` (one dict per graph) keeps values by tensor between calls; it holds the tensors too,
    so an id is never reused while its entry lives.
    """
    memo = {} if memo is None else memo
    hit = memo.get(id(tensor))
    if hit is not None and hit[0] is tensor:
        return hit[1]
    memo[id(tensor)] = (tensor, None)  # guards against cycles in malformed graphs
    value = _evaluate(tensor, memo)
    memo[id(tensor)] = (tensor, value)
    return value


def _evaluate(tensor: gs.Tensor, memo: dict) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant):
        values = tensor._values
        if isinstance(values, gs.ir.tensor.LazyValues):  # read the proto without caching a copy
            return tensor_array(values.tensor)  # (or its file: weights left on disk, passes.external)
        return np.asarray(tensor.values)
    if not tensor.name or not tensor.inputs:
        return None
    node = tensor.inputs[0]
    if node.op not in _FOLDABLE_OPS or (node.domain or "") not in DEFAULT_DOMAINS:
        return None
    attrs = node.attrs
    if node.op == "Constant":
        return _constant_node_value(attrs)
    args = [constant_value(t, memo) if t.name else None for t in node.inputs]
    if not args or args[0] is None:
        return None
    x, op = args[0], node.op
    if op == "Identity":
        return x
    if op == "Cast":
        return x.astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Transpose":
        return np.transpose(x, attrs.get("perm"))
    if op == "Flatten":
        axis = attrs.get("axis", 1) % max(x.ndim, 1) if x.ndim else 0
        return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
    if op == "Reshape":
        if len(args) < 2 or args[1] is None:
            return None
        shape = [int(s) for s in args[1]]
        if not attrs.get("allowzero", 0):
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return x.reshape(shape)
    axes = attrs.get("axes")
    if axes is None and len(args) > 1:
        if node.inputs[1].name and args[1] is None:
            return None
        axes = None if args[1] is None else [int(a) for a in args[1]]
    if op == "Squeeze":
        return np.squeeze(x, axis=None if axes is None else tuple(axes))
    if axes is None:  # Unsqueeze
        return None
    out, rank = x, x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        out = np.expand_dims(out, a)
    return out


def external_proto(tensor: gs.Tensor):
    """The TensorProto of a constant whose value is still on disk (passes.external), else None;
    large weights are read from it in chunks (:func:`~ristretto_onnx.passes.external.tensor_rows`)."""
    if isinstance(tensor, gs.Constant) and isinstance(tensor._values, gs.ir.tensor.LazyValues):
        proto = tensor._values.tensor
        if isinstance(proto, TensorProto) and is_external(proto):
            return proto
    return None


def _constant_node_value(attrs: dict) -> np.ndarray | None:
    if isinstance(attrs.get("value"), gs.Constant):
        return constant_value(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    return None  # sparse and string constants are never weights


def elem_type(tensor: gs.Tensor, memo: dict | None = None) -> int | None:
    """ONNX element type (``TensorProto.FLOAT`` ...) when known, else ``None``."""
    if isinstance(tensor, gs.Constant):
        values = tensor._values
        if isinstance(values, gs.ir.tensor.LazyValues):
            return values.tensor.data_type
        return helper.np_dtype_to_tensor_dtype(np.asarray(tensor.values).dtype)
    if tensor.dtype is not None:
        return dtype_to_onnx(tensor.dtype)
    hit = (memo or {}).get(id(tensor))
    value = hit[1] if hit is not None and hit[0] is tensor else None
    return None if value is None else helper.np_dtype_to_tensor_dtype(value.dtype)


def static_shape(tensor: gs.Tensor, memo: dict | None = None) -> tuple | None:
    """Static shape (ints, symbolic names or ``None`` per axis) when known."""
    if isinstance(tensor, gs.Constant):
        return tuple(tensor.shape)
    if tensor.shape is not None:
        return tuple(tensor.shape)
    value = constant_value(tensor, memo) if tensor.inputs else None
    return None if value is None else tuple(value.shape)


def constant_lookup(model: ModelProto | gs.Graph):
    """``name -> value`` of the constant tensors of one graph (``None`` for other names)."""
    graph = model if isinstance(model, gs.Graph) else import_graph(model)
    tensors = graph.tensors()
    memo: dict = {}

    def value(name: str) -> np.ndarray | None:
        tensor = tensors.get(name)
        return None if tensor is None else constant_value(tensor, memo)

    return value


def single_input(model: ModelProto | gs.Graph, what: str) -> str:
    """The name of the model's one runtime input; ``what`` (e.g. "compress") needs exactly one."""
    names = runtime_inputs(model)
    if len(names) != 1:
        raise RistrettoError(f"{what} needs a model with one input; this one has {len(names)}"
                             + (f": {', '.join(names)}" if names else ""))
    return names[0]
