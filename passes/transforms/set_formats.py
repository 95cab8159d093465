"""Give every group of an annotated model its format (or float), without re-inserting anything.

Each slot (see :mod:`~ristretto_onnx.passes.slots`) becomes one of:

* ``Identity(source)`` when the group is float (``None`` or absent from the plan);
* ``Identity(source)`` when ``source`` already holds values of exactly this format and rounding:
  a layer's input that is the previous layer's output slot with the same format, directly or
  through ops that keep every value on that format's grid (ReLU, max pooling, reshapes, a
  Concat of such tensors: :data:`~ristretto_onnx.passes.grid_ties.GRID_KEEPING`; a per-channel
  format only through ReLU, max pooling and Identity, which keep the channel axis). Quantizing
  again would change nothing (every format is idempotent on its own values: a grid value, a
  saturated bound, +-0 and NaN quantize to themselves, with either rounding), so the producer's
  quantizer is reused;
* ``Identity(<earlier slot output>)`` when an earlier slot quantizes the same ``source`` to the
  same format (a tensor read by several layers, or tied weights, is quantized once);
* ``QuantizeSim(source)`` otherwise.

Only slot nodes are rewritten, in one pass over the slot table, and then one other kind: a ``Relu``
whose input holds values of an unsigned format (``ufixed``: never negative, never -0) computes
nothing and becomes ``Identity`` (onnxruntime drops it: one pass over the activations less per
such layer output). Its name goes to the model's ``ristretto.relus_skipped`` metadata and the
next plan restores it first, so a written model can be re-planned (or made float) later. The
result carries the function bodies (:func:`~ristretto_onnx.ops.attach_functions`) so plain
onnxruntime runs it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Mapping

import onnx_graphsurgeon as gs
from onnx import ModelProto, helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import ROUNDINGS, Format, PerChannel, UFixed, parse_format
from ristretto_onnx.ops import DOMAIN, OP_TYPE, attach_functions, make_quantize_node
from ristretto_onnx.passes.contract import PassResult, Transformation
from ristretto_onnx.passes.graph import DEFAULT_DOMAINS, export_model, import_graph, is_op, producer, set_inputs
from ristretto_onnx.passes.grid_ties import carried_input
from ristretto_onnx.passes.plan import GroupFormat, format_of
from ristretto_onnx.passes.slots import Slot, read_skipped_relus, read_slots, write_plan, write_skipped_relus


class SetFormats(Transformation):
    """Rewrite the slot nodes of an annotated graph for ``formats`` (group id -> format).

    ``skipped`` names the ReLUs an earlier plan wrote as ``Identity`` (restored first); after
    :meth:`apply`, :attr:`skipped` names the ones this plan skips (module docstring).
    """

    name = "set_formats"

    def __init__(self, slots: tuple[Slot, ...], formats: Mapping[str, GroupFormat],
                 rounding: str, skipped: tuple[str, ...] = ()) -> None:
        self.slots, self.formats, self.rounding = slots, formats, rounding
        self.restore, self.skipped = frozenset(skipped), ()

    def apply(self, graph: gs.Graph) -> PassResult:
        slot_nodes = {s.node for s in self.slots}
        nodes = {n.name: n for n in graph.nodes if n.name in slot_nodes}
        if len(nodes) != len(slot_nodes):
            missing = sorted(slot_nodes - set(nodes))[0]
            raise RistrettoError(f"quantizer slot node {missing!r} is missing from the graph")
        for node in graph.nodes:  # ReLUs the previous plan skipped
            if node.name in self.restore and node.op == "Identity":
                node.op, node.domain = "Relu", None
        tensors = {t.name: t for n in nodes.values() for t in (*n.inputs, *n.outputs)}
        holds: dict[str, str] = {}           # slot output -> format key of the values it holds
        kinds: dict[str, GroupFormat] = {}   # format key -> format
        quantized: dict[tuple[str, str], str] = {}  # (source, format key) -> output holding it
        held = _Held(holds, {s.output for s in self.slots}, kinds)
        for slot in self.slots:
            fmt = self.formats.get(slot.group)
            node = nodes[slot.node]
            source = tensors[slot.source]
            if fmt is None:
                _become_identity(node, source)
                if held(source) is not None:
                    holds[slot.output] = held(source)
                continue
            key = f"{fmt}|{self.rounding}"
            kinds[key] = fmt
            if held(source) == key:
                _become_identity(node, source)
            elif (slot.source, key) in quantized:
                _become_identity(node, tensors[quantized[(slot.source, key)]])
            else:
                _become_quantizer(node, source, fmt, self.rounding, slot.rank)
                quantized[(slot.source, key)] = slot.output
            holds[slot.output] = key
        self.skipped = _skip_relus(graph, held)
        return PassResult(graph, True)


#: Ops that keep a per-channel format's channel axis where it was (a subset of GRID_KEEPING).
_AXIS_KEEPING = frozenset({"Relu", "MaxPool", "GlobalMaxPool", "Identity"})


class _Held:
    """``held(tensor)``: the format key of the values ``tensor`` provably holds, or None.

    A slot output holds what ``holds`` says once its slot is set (before, nothing: graph order);
    another tensor holds what its producer's input holds when the producer keeps every value on
    the grid (:data:`GRID_KEEPING`; a Concat when all its inputs hold one scalar format).
    """

    def __init__(self, holds: dict[str, str], slot_outputs: set[str], kinds: dict[str, GroupFormat]) -> None:
        self.holds, self.slot_outputs, self.kinds = holds, slot_outputs, kinds
        self.memo: dict[str, str | None] = {}

    def __call__(self, tensor: gs.Tensor, depth: int = 0) -> str | None:
        if tensor.name in self.holds or tensor.name in self.slot_outputs:
            return self.holds.get(tensor.name)
        if tensor.name not in self.memo:
            self.memo[tensor.name] = self._find(tensor, depth)
        return self.memo[tensor.name]

    def _find(self, tensor: gs.Tensor, depth: int) -> str | None:
        node = producer(tensor)
        if node is None or depth > 64 or (node.domain or "") not in DEFAULT_DOMAINS:
            return None
        if node.op == "Concat":
            keys = {self(t, depth + 1) for t in node.inputs}
            key = keys.pop() if len(keys) == 1 else None
            return key if key is not None and not isinstance(self.kinds.get(key), PerChannel) else None
        carried = carried_input(tensor)
        if carried is None:
            return None
        key = self(carried, depth + 1)
        if key is not None and isinstance(self.kinds.get(key), PerChannel) and node.op not in _AXIS_KEEPING:
            return None
        return key


def _skip_relus(graph: gs.Graph, held: _Held) -> tuple[str, ...]:
    """Write each ``Relu`` whose input holds unsigned-format values as ``Identity``; their names.

    Exact: an unsigned format's values are +0, positive numbers and NaN (its quantizer maps every
    negative and -0 to +0), which onnxruntime's ReLU passes unchanged. Only ReLUs with a name no
    other node has are skipped (the name is how the next plan finds them again).
    """
    names = Counter(n.name for n in graph.nodes)
    out = []
    for node in graph.nodes:
        if not (is_op(node, "Relu") and len(node.inputs) == 1 and node.name and names[node.name] == 1):
            continue
        key = held(node.inputs[0])
        if key is not None and isinstance(held.kinds.get(key), UFixed):
            node.op, node.domain = "Identity", None
            out.append(node.name)
    return tuple(out)


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
    step = SetFormats(slots, formats, rounding, read_skipped_relus(model))
    step(graph)
    out = export_model(graph, model)
    write_plan(out, formats, rounding)
    write_skipped_relus(out, step.skipped)
    return attach_functions(out)


def restore_skipped_relus(model: ModelProto) -> ModelProto:
    """``model`` with the ReLUs its plan skipped put back (``model`` itself when there are none):
    for readers that give quantizers another meaning, e.g. fine-tuning, whose activation
    quantizers pass values through in training, where the ReLU does matter."""
    names = set(read_skipped_relus(model))
    if not names:
        return model
    out = ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.name in names and node.op_type == "Identity" and node.domain in ("", "ai.onnx"):
            node.op_type = "Relu"
    write_skipped_relus(out, ())
    return out


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
