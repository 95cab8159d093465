"""Give every group of an annotated model its format (or float), without re-inserting anything.

Each slot (see :mod:`~ristretto_onnx.passes.slots`) becomes one of:

* ``Identity(source)`` when the group is float (``None`` or absent from the plan);
* ``Identity(source)`` when ``source`` already holds values of exactly this format and rounding
  (a layer's input that is the previous layer's output slot with the same format: quantizing
  again would change nothing, so the producer's quantizer is reused);
* ``Identity(<earlier slot output>)`` when an earlier slot quantizes the same ``source`` to the
  same format (a tensor read by several layers, or tied weights, is quantized once);
* ``QuantizeSim(source)`` otherwise.

Only slot nodes are rewritten, in one pass over the slot table; the result carries the function
bodies (:func:`~ristretto_onnx.ops.attach_functions`) so plain onnxruntime runs it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import onnx_graphsurgeon as gs
from onnx import ModelProto, helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import ROUNDINGS, Format, parse_format
from ristretto_onnx.ops import DOMAIN, OP_TYPE, attach_functions, make_quantize_node
from ristretto_onnx.passes.contract import PassResult, Transformation
from ristretto_onnx.passes.graph import export_model, import_graph, set_inputs
from ristretto_onnx.passes.plan import GroupFormat, format_of
from ristretto_onnx.passes.slots import Slot, read_slots, write_plan


class SetFormats(Transformation):
    """Rewrite the slot nodes of an annotated graph for ``formats`` (group id -> format)."""

    name = "set_formats"

    def __init__(self, slots: tuple[Slot, ...], formats: Mapping[str, GroupFormat],
                 rounding: str) -> None:
        self.slots, self.formats, self.rounding = slots, formats, rounding

    def apply(self, graph: gs.Graph) -> PassResult:
        slot_nodes = {s.node for s in self.slots}
        nodes = {n.name: n for n in graph.nodes if n.name in slot_nodes}
        if len(nodes) != len(slot_nodes):
            missing = sorted(slot_nodes - set(nodes))[0]
            raise RistrettoError(f"quantizer slot node {missing!r} is missing from the graph")
        tensors = {t.name: t for n in nodes.values() for t in (*n.inputs, *n.outputs)}
        holds: dict[str, str] = {}           # tensor -> format key of the values it holds
        quantized: dict[tuple[str, str], str] = {}  # (source, format key) -> output holding it
        for slot in self.slots:
            fmt = self.formats.get(slot.group)
            node = nodes[slot.node]
            source = tensors[slot.source]
            if fmt is None:
                _become_identity(node, source)
                if slot.source in holds:
                    holds[slot.output] = holds[slot.source]
                continue
            key = f"{fmt}|{self.rounding}"
            if holds.get(slot.source) == key:
                _become_identity(node, source)
            elif (slot.source, key) in quantized:
                _become_identity(node, tensors[quantized[(slot.source, key)]])
            else:
                _become_quantizer(node, source, fmt, self.rounding, slot.rank)
                quantized[(slot.source, key)] = slot.output
            holds[slot.output] = key
        return PassResult(graph, True)


class SetNodeFormats(Transformation):
    """Give named ``QuantizeSim`` (or ``Identity``) nodes a format (``None``: ``Identity``), for
    models with quantizers but no slot table; ``roundings`` gives each node's rounding."""

    name = "set_node_formats"

    def __init__(self, formats: Mapping[str, GroupFormat], roundings: Mapping[str, str]) -> None:
        self.formats, self.roundings = formats, roundings

    def apply(self, graph: gs.Graph) -> PassResult:
        changed = False
        for node in graph.nodes:
            if node.name in self.formats and (is_quantizer(node) or node.op == "Identity"):
                fmt, source = self.formats[node.name], node.inputs[0]
                if fmt is None:
                    _become_identity(node, source)
                else:
                    _become_quantizer(node, source, fmt, self.roundings[node.name], None)
                changed = True
        return PassResult(graph, changed)


def check_plan(model: ModelProto, plan: Mapping[str, object],
               rounding: str) -> tuple[tuple[Slot, ...], dict[str, GroupFormat]]:
    """The slot table of ``model`` and ``plan`` normalized to every group (one-line errors)."""
    if rounding not in ROUNDINGS:
        raise RistrettoError(f"unknown rounding {rounding!r}; expected one of {', '.join(ROUNDINGS)}")
    slots = read_slots(model)
    groups = {s.group for s in slots}
    unknown = [g for g in plan if g not in groups]
    if unknown:
        raise RistrettoError(f"the plan names {len(unknown)} group(s) the model does not have, e.g. "
                             f"{unknown[0]!r}; groups look like {next(iter(sorted(groups)), '-')!r}")
    return slots, {g: format_of(plan.get(g)) for g in sorted(groups)}


def set_formats(model: ModelProto, plan: Mapping[str, object], *,
                rounding: str = "nearest_even") -> ModelProto:
    """A runnable copy of the annotated ``model`` with ``plan`` applied (see the module docstring).

    ``plan`` maps group ids to formats, format strings or ``None``; groups it omits stay float.
    An id that names no group of the model is an error (a typo must not silently mean float).
    """
    slots, formats = check_plan(model, plan, rounding)
    graph = import_graph(model)
    SetFormats(slots, formats, rounding)(graph)
    out = export_model(graph, model)
    write_plan(out, formats, rounding)
    return attach_functions(out)


def is_quantizer(node: gs.Node) -> bool:
    """``node`` is a ``QuantizeSim`` node."""
    return node.op == OP_TYPE and node.domain == DOMAIN


def quantizer_format(node: gs.Node) -> tuple[Format, str]:
    """The (format, rounding) of a ``QuantizeSim`` node, validated."""
    attrs = node.attrs
    if "format" not in attrs:
        raise RistrettoError(f"QuantizeSim node {node.name!r} has no 'format' attribute")
    fmt = parse_format(str(attrs["format"]), axis=attrs.get("axis"))
    rounding = str(attrs.get("rounding", "nearest_even"))
    if rounding not in ROUNDINGS:
        raise RistrettoError(f"QuantizeSim node {node.name!r}: unknown rounding {rounding!r}")
    return fmt, rounding


def _become_identity(node: gs.Node, source: gs.Tensor) -> None:
    node.op, node.domain, node.attrs = "Identity", None, OrderedDict()
    node.overload = ""
    set_inputs(node, [source])


def _become_quantizer(node: gs.Node, source: gs.Tensor, fmt: Format, rounding: str,
                      rank: int | None) -> None:
    proto = make_quantize_node(source.name, node.outputs[0].name, fmt, rounding=rounding,
                               name=node.name, rank=rank)
    node.op, node.domain, node.overload = proto.op_type, proto.domain, proto.overload
    node.attrs = OrderedDict((a.name, _attr_value(a)) for a in proto.attribute)
    set_inputs(node, [source])


def _attr_value(attr):
    value = helper.get_attribute_value(attr)
    return value.decode() if isinstance(value, bytes) else value
