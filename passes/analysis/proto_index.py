"""A read-only index of one ONNX ``GraphProto``: producers, consumers, constants and tensor types.

Used by the accuracy analyses (nonnegative, grid_ties, bias_correction, equalize,
ristretto_onnx.channel_rule), written on the proto before the graph layer moved to
onnx-graphsurgeon (passes.graph); porting them onto that layer would retire this module.

Every pass asks the same questions about a graph (who writes this tensor, who reads it, is it a
constant and what is its value); answering them from one index built in a single sweep keeps the
passes short and linear in the graph size. The index never modifies the graph it describes.

A tensor is *constant* when its value is fixed once the model is loaded: an initializer (also when
it is listed as a graph input with the initializer as its default: a model exported with
``keep_initializers_as_inputs`` still has weights), the output of a ``Constant`` node, or the
result of a shape-only or type-only op (``Transpose``, ``Cast``, ``Reshape`` ...) applied to
constants. A graph input without an initializer is a runtime input and never constant.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from onnx import GraphProto, NodeProto, TensorProto, helper, numpy_helper

from ristretto_onnx.passes.external import tensor_array

#: Ops through which a constant stays constant and whose numpy evaluation is trivial.
_FOLDABLE_OPS = frozenset({"Constant", "Identity", "Transpose", "Cast", "Reshape", "Squeeze",
                           "Unsqueeze", "Flatten"})


class GraphIndex:
    """Producers, consumers and constant values of the tensors of one graph (no subgraphs)."""

    def __init__(self, graph: GraphProto) -> None:
        self.graph = graph
        self.initializers: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        self.graph_inputs: tuple[str, ...] = tuple(i.name for i in graph.input)
        self.graph_outputs: frozenset[str] = frozenset(o.name for o in graph.output)
        #: Graph inputs the caller must feed (no initializer default).
        self.runtime_inputs: tuple[str, ...] = tuple(
            n for n in self.graph_inputs if n not in self.initializers)
        self.producer: dict[str, NodeProto] = {}
        self.consumers: dict[str, list[NodeProto]] = {}
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in _node_reads(node):
                self.consumers.setdefault(name, []).append(node)
        self._types: dict[str, object] = {}
        for vi in (*graph.input, *graph.output, *graph.value_info):
            self._types.setdefault(vi.name, vi.type)
        self._values: dict[str, np.ndarray | None] = {}

    # ---- structure

    def consumers_of(self, name: str) -> list[NodeProto]:
        return self.consumers.get(name, [])

    def sole_consumer(self, name: str) -> NodeProto | None:
        """The only node reading ``name``, if exactly one does and it is not a graph output."""
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.graph_outputs:
            return users[0]
        return None

    def all_tensor_names(self) -> set[str]:
        names = set(self.initializers) | set(self.graph_inputs) | set(self.graph_outputs)
        for node in self.graph.node:
            names.update(node.input)
            names.update(node.output)
        names.discard("")
        return names

    # ---- constants

    def is_constant(self, name: str) -> bool:
        return self.constant_value(name) is not None

    def constant_value(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (see the module docstring), else ``None``. Memoized."""
        if name in self._values:
            return self._values[name]
        self._values[name] = None  # guards against cycles in malformed graphs
        value = self._evaluate(name)
        self._values[name] = value
        return value

    def _evaluate(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name in self.initializers:
            return tensor_array(self.initializers[name])
        if name in self.graph_inputs:
            return None
        node = self.producer.get(name)
        if node is None or node.op_type not in _FOLDABLE_OPS or node.domain not in ("", "ai.onnx"):
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant":
            return _constant_node_value(attrs)
        args = [self.constant_value(i) if i else None for i in node.input]
        if not args or args[0] is None:
            return None
        x = args[0]
        op = node.op_type
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
            if node.input[1] and args[1] is None:
                return None
            axes = None if args[1] is None else [int(a) for a in args[1]]
        if op == "Squeeze":
            return np.squeeze(x, axis=None if axes is None else tuple(axes))
        if op == "Unsqueeze":
            if axes is None:
                return None
            out = x
            rank = x.ndim + len(axes)
            for a in sorted(a % rank for a in axes):
                out = np.expand_dims(out, a)
            return out
        return None

    # ---- types

    def elem_type(self, name: str) -> int | None:
        """ONNX element type (``TensorProto.FLOAT`` ...) when known, else ``None``."""
        if name in self.initializers:
            return self.initializers[name].data_type
        tp = self._types.get(name)
        if tp is not None and tp.HasField("tensor_type") and tp.tensor_type.elem_type:
            return tp.tensor_type.elem_type
        value = self._values.get(name)
        if value is not None:
            return helper.np_dtype_to_tensor_dtype(value.dtype)
        return None

    def shape(self, name: str) -> tuple[int | str | None, ...] | None:
        """Static shape (ints, symbolic names or ``None`` per axis) when known."""
        if name in self.initializers:
            return tuple(self.initializers[name].dims)
        tp = self._types.get(name)
        if tp is None or not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
            value = self.constant_value(name) if name in self.producer else None
            return None if value is None else tuple(value.shape)
        return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in tp.tensor_type.shape.dim)


def _constant_node_value(attrs: dict) -> np.ndarray | None:
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    if "value_float" in attrs:
        return np.asarray(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.asarray(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.asarray(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.asarray(attrs["value_ints"], dtype=np.int64)
    return None  # sparse and string constants are never weights


def _node_reads(node: NodeProto) -> Iterable[str]:
    """Tensors a node reads, including names its subgraphs capture from the outer scope."""
    yield from (n for n in node.input if n)
    for attr in node.attribute:
        graphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
        for g in graphs:
            yield from _captured_names(g)


def _captured_names(graph: GraphProto) -> set[str]:
    local = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    for node in graph.node:
        local.update(node.output)
    read: set[str] = set()
    for node in graph.node:
        read.update(n for n in _node_reads(node) if n)
    read.update(o.name for o in graph.output)
    return read - local


def unique_name(stem: str, taken: set[str]) -> str:
    """``stem`` or ``stem_1``, ``stem_2`` ... whichever is not in ``taken``; adds it to ``taken``."""
    name, k = stem, 0
    while name in taken:
        k += 1
        name = f"{stem}_{k}"
    taken.add(name)
    return name
