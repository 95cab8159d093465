"""Fuse runs of elementwise nodes around the QuantizeSim kernels into one pass (issue 14).

In a CNN the quantizers come in runs: a layer's output quantizer, the ReLU (or the residual Add
and the ReLU) and the next layer's input quantizer (thesis fig. 9.1: every layer output and
input is quantized). Run one node at a time, each is one more pass over the activations, which
on the CPU costs about as much as the quantization itself. The kernel library therefore has a
second op, ``ai.ristretto::QuantizeSimChain``: its ``steps`` attribute lists formats, ``relu``
and ``add`` (plus its second input), applied one after the other to each element in a single
pass (``kernels/ristretto_kernels.cc``); ``tee`` also writes the value so far to a second
output, for a tensor with one more reader (the ReLU output a residual connection reads too).

``Identity`` nodes inside a run (a float or shared slot, a ReLU ``set_formats`` skipped) join it
without a step. Exact by construction: every step is the float32 function of the node it replaces (the
QuantizeSim reference, onnxruntime's ``Relu``: negatives give +0, -0 and NaN pass; ``Add`` of two
tensors of the same static shape, no broadcasting), applied to the same values in the same
order; intermediate tensors are dropped only when the next node of the run is their only
reader and they are not graph outputs (one with a second reader leaves the chain as its tee
output). The nodes are put back in topological order.

Only project CPU sessions that register the library get chains (:func:`fuse_chains` is called
by :func:`ristretto_onnx.runtime.kernels.prepare`); written models never contain them.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict

import numpy as np
from onnx import ModelProto, NodeProto, helper

from ristretto_onnx.formats import PerChannel
from ristretto_onnx.ops import DOMAIN, is_quantize_sim, node_format

CHAIN_OP = "QuantizeSimChain"


def _chain_step(node: NodeProto) -> str | None:
    """The step a QuantizeSim node becomes, or None when it cannot join a chain."""
    if not is_quantize_sim(node) or any(a.name in ("axis", "seed") for a in node.attribute):
        return None
    fmt, rounding = node_format(node)
    if rounding != "nearest_even" or isinstance(fmt, PerChannel):
        return None
    return str(fmt)


def drop_repeated_quantizers(steps: list[str]) -> list[str]:
    """``steps`` without quantizers that repeat the format applied before them with only ReLUs
    (and tees) in between: the layer output quantizer, ReLU, input quantizer of the next layer
    run in a CNN whose formats agree (``ufixed:8:6|relu|ufixed:8:6``) is ``ufixed:8:6|relu``.

    Exact: every scalar nearest-even format is idempotent on its own values (a value on the
    grid, a saturated bound, +-0 and NaN quantize to themselves), and onnxruntime's ReLU maps
    them onto such values (negatives to +0, which every format keeps; -0, NaN and non-negative
    values pass). A quantizer right after a tee stays (a chain cannot end with a tee).
    """
    out: list[str] = []
    last = None  # the format whose values the current value is
    for step in steps:
        if step in ("relu", "tee"):
            out.append(step)
            continue
        if step == "add":
            last = None
        elif step == last and out[-1] != "tee":
            continue
        else:
            last = step
        out.append(step)
    return out


def _known(shape: tuple | None) -> bool:
    """A shape whose symbolic dimensions are named ones (onnx names an unknown one ``unk__N``)."""
    return shape is not None and not any(isinstance(d, str) and d.startswith("unk__") for d in shape)


def _static_shapes(model: ModelProto) -> dict[str, tuple]:
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") or d.dim_param for d in t.shape.dim):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim)
    return shapes


#: Ops never evaluated ahead of time (their value changes from run to run).
_RANDOM = frozenset({"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Multinomial",
                     "Bernoulli"})
_SMALL = 4096  # elements: constants folded to learn shapes (pads, shapes, axes), never weights


#: Shape-preserving nodes whose kind a format plan changes (slot nodes, skipped ReLUs): the
#: shape cache below sees only their inputs and outputs.
_SAME_SHAPE = frozenset({("ai.ristretto", "QuantizeSim"), ("", "Identity"), ("", "Relu")})
_SHAPE_CACHE: OrderedDict[str, dict[str, tuple]] = OrderedDict()
_SHAPE_CACHE_SIZE = 8


def _shape_key(model: ModelProto) -> str:
    """A digest of everything :func:`_shapes_through_constants` reads, except what a format plan
    changes: the plans of one model (one session each in a search) share one evaluation."""
    h = hashlib.sha1()
    for node in model.graph.node:
        if (node.domain or "", node.op_type) in _SAME_SHAPE and len(node.input) == len(node.output) == 1:
            h.update(b"=" + "\0".join((node.input[0], node.output[0])).encode() + b"\1")
        else:
            h.update(node.SerializeToString() + b"\1")
    for t in model.graph.initializer:
        small = int(np.prod(t.dims)) <= _SMALL
        h.update(t.SerializeToString() if small else f"{t.name}:{t.data_type}:{list(t.dims)}".encode())
        h.update(b"\2")
    for vi in (*model.graph.input, *model.graph.output, *model.opset_import):
        h.update(vi.SerializeToString() + b"\3")
    h.update(str(model.ir_version).encode())
    return h.hexdigest()


def _shapes_through_constants(model: ModelProto) -> dict[str, tuple]:
    """:func:`_evaluate_shapes`, computed once per model structure (a small LRU cache, :func:`_shape_key`)."""
    key = _shape_key(model)
    if key in _SHAPE_CACHE:
        _SHAPE_CACHE.move_to_end(key)
    else:
        _SHAPE_CACHE[key] = _evaluate_shapes(model)
        while len(_SHAPE_CACHE) > _SHAPE_CACHE_SIZE:
            _SHAPE_CACHE.popitem(last=False)
    return dict(_SHAPE_CACHE[key])


def _evaluate_shapes(model: ModelProto) -> dict[str, tuple]:
    """Static shapes after evaluating the small constant subgraphs (onnx.reference, numpy).

    Exported CNNs compute some shape inputs from constants (the option-A shortcut of the CIFAR
    ResNets pads channels by a ConstantOfShape/Concat/Reshape/Transpose chain), which onnx's
    shape inference does not evaluate, so a residual Add's other input has no static shape and
    its run could not join a chain. Only shapes are taken from this; the model is unchanged.
    """
    from onnx import numpy_helper, shape_inference
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    small = {t.name: t for t in graph.initializer if int(np.prod(t.dims)) <= _SMALL}
    const, folded_nodes = set(small), []
    for node in graph.node:
        if (node.domain in ("", "ai.onnx") and node.op_type not in _RANDOM
                and not any(a.type in (5, 10) for a in node.attribute)  # no subgraphs
                and all(not i or i in const for i in node.input)):
            folded_nodes.append(node)
            const.update(node.output)
    folded = {id(n) for n in folded_nodes}
    rest = [n for n in graph.node if id(n) not in folded]
    needed = sorted({i for n in rest for i in n.input if i in const and i not in small})
    if not needed:
        return {}
    sub = helper.make_graph(folded_nodes, "constants", [], [helper.make_tensor_value_info(n, 0, None) for n in needed],
                            [small[i] for i in sorted({i for n in folded_nodes for i in n.input if i in small})])
    sub_model = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        values = ReferenceEvaluator(sub_model).run(None, {})
    except Exception:  # noqa: BLE001 - an op the reference cannot run: no extra shapes
        return {}
    inits = list(small.values()) + [numpy_helper.from_array(np.asarray(v), n) for n, v in zip(needed, values)]
    big = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.initializer
           if t.name not in small]
    light = helper.make_model(
        helper.make_graph(rest, graph.name,
                          list(graph.input) + big, list(graph.output), inits),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    light.functions.extend(model.functions)
    try:
        return _static_shapes(shape_inference.infer_shapes(light, strict_mode=False))
    except Exception:  # noqa: BLE001 - shapes are an optimization here
        return {}


def _subgraph_names(graph) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == 5 else list(attr.graphs)):
                for n in g.node:
                    names.update(n.input)
                names |= _subgraph_names(g)
    return names


def fuse_chains(model: ModelProto) -> ModelProto | None:
    """A copy of ``model`` with runs of QuantizeSim/Relu/Add fused (module docstring), or None."""
    graph = model.graph
    readers = Counter(name for node in graph.node for name in node.input if name)
    pinned = {o.name for o in graph.output} | _subgraph_names(graph)
    users: dict[str, list[NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    shapes = _static_shapes(model)
    if any(n.op_type == "Add" and n.domain in ("", "ai.onnx") and not all(_known(shapes.get(i)) for i in n.input)
           for n in graph.node):
        shapes.update({k: v for k, v in _shapes_through_constants(model).items() if not _known(shapes.get(k))})
    taken: set[int] = set()
    chains: dict[int, tuple[NodeProto, list]] = {}  # id(last node) -> (chain node, members)
    for node in graph.node:
        first = _chain_step(node)
        if first is None or id(node) in taken:
            continue
        steps, members, extra, tee, t = [first], [node], None, None, node.output[0]
        while t not in pinned and readers[t] in (1, 2) and len(users.get(t, ())) == readers[t]:
            if readers[t] == 1:
                nxt = users[t][0]
            else:  # a second reader: continue into a quantizer, keep t as the tee output
                nxt = next((u for u in users[t] if _chain_step(u) is not None and id(u) not in taken), None)
                if tee is not None or nxt is None or len(set(map(id, users[t]))) != 2:
                    break
            if id(nxt) in taken:
                break
            step = _chain_step(nxt)
            if step is None and nxt.domain in ("", "ai.onnx"):
                if nxt.op_type == "Identity" and readers[t] == 1:  # a float or shared slot, a skipped ReLU
                    step = ""
                elif nxt.op_type == "Relu" and list(nxt.input) == [t]:
                    step = "relu"
                elif nxt.op_type == "Add" and extra is None and len(nxt.input) == 2 and nxt.input[0] != nxt.input[1]:
                    other = nxt.input[1] if nxt.input[0] == t else nxt.input[0]
                    if shapes.get(other) is not None and shapes.get(other) == shapes.get(t) \
                            and not any(isinstance(d, str) for d in shapes[t][1:]):
                        step, extra = "add", other
            if step is None or len(nxt.output) != 1:
                break
            if readers[t] == 2:
                steps.append("tee")
                tee = t
            if step:
                steps.append(step)
            members.append(nxt)
            t = nxt.output[0]
        if len(steps) < 2:
            continue
        steps = drop_repeated_quantizers(steps)
        inputs = [node.input[0]] + ([extra] if extra is not None else [])
        chain = helper.make_node(CHAIN_OP, inputs, [t] + ([tee] if tee is not None else []),
                                 name=f"{node.name or t}_chain", domain=DOMAIN, steps="|".join(steps))
        taken.update(id(m) for m in members)
        chains[id(members[-1])] = (chain, members)
    if not chains:
        return None
    out = ModelProto()
    out.CopyFrom(model)
    dropped = {name for chain, members in chains.values() for m in members[:-1] for name in m.output} \
        - {name for chain, _ in chains.values() for name in chain.output}
    nodes = []
    for node in graph.node:
        if id(node) in chains:
            nodes.append(chains[id(node)][0])
        elif id(node) not in taken:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(_topological(nodes))
    keep = [vi for vi in out.graph.value_info if vi.name not in dropped]
    del out.graph.value_info[:]
    out.graph.value_info.extend(keep)
    return out


def _topological(nodes: list[NodeProto]) -> list[NodeProto]:
    """``nodes`` in an order where every tensor is produced before it is read (stable: the
    given order wherever it already is one). A tee output can be read before the chain's place."""
    produced_by = {name: k for k, n in enumerate(nodes) for name in n.output}
    done: set[int] = set()
    order: list[NodeProto] = []

    def visit(k: int) -> None:
        stack = [(k, False)]
        while stack:
            i, expanded = stack.pop()
            if i in done:
                continue
            if expanded:
                done.add(i)
                order.append(nodes[i])
                continue
            stack.append((i, True))
            for name in reversed(list(nodes[i].input)):
                j = produced_by.get(name)
                if j is not None and j not in done:
                    stack.append((j, False))

    for k in range(len(nodes)):
        visit(k)
    return order
