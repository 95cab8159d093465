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

from collections.abc import Mapping

from onnx import ModelProto, NodeProto

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import ROUNDINGS, Format
from ristretto_onnx.ops import attach_functions, make_quantize_node
from ristretto_onnx.passes.plan import GroupFormat, format_of
from ristretto_onnx.passes.slots import read_slots, write_plan


def set_formats(model: ModelProto, plan: Mapping[str, object], *,
                rounding: str = "nearest_even") -> ModelProto:
    """A runnable copy of the annotated ``model`` with ``plan`` applied (see the module docstring).

    ``plan`` maps group ids to formats, format strings or ``None``; groups it omits stay float.
    An id that names no group of the model is an error (a typo must not silently mean float).
    """
    if rounding not in ROUNDINGS:
        raise RistrettoError(f"unknown rounding {rounding!r}; expected one of {', '.join(ROUNDINGS)}")
    slots = read_slots(model)
    groups = {s.group for s in slots}
    unknown = [g for g in plan if g not in groups]
    if unknown:
        raise RistrettoError(f"the plan names {len(unknown)} group(s) the model does not have, e.g. "
                             f"{unknown[0]!r}; groups look like {next(iter(sorted(groups)), '-')!r}")
    formats: dict[str, GroupFormat] = {g: format_of(plan.get(g)) for g in sorted(groups)}

    out = ModelProto()
    out.CopyFrom(model)
    slot_nodes = {s.node for s in slots}
    nodes = {n.name: n for n in out.graph.node if n.name in slot_nodes}
    if len(nodes) != len(slot_nodes):
        missing = sorted(slot_nodes - set(nodes))[0]
        raise RistrettoError(f"quantizer slot node {missing!r} is missing from the graph")

    holds: dict[str, str] = {}           # tensor -> format key of the values it holds
    quantized: dict[tuple[str, str], str] = {}  # (source, format key) -> output holding it
    for slot in slots:
        fmt = formats[slot.group]
        node = nodes[slot.node]
        if fmt is None:
            _become_identity(node, slot.source)
            if slot.source in holds:
                holds[slot.output] = holds[slot.source]
            continue
        key = f"{fmt}|{rounding}"
        if holds.get(slot.source) == key:
            _become_identity(node, slot.source)
        elif (slot.source, key) in quantized:
            _become_identity(node, quantized[(slot.source, key)])
        else:
            _become_quantizer(node, slot.source, fmt, rounding, slot.rank)
            quantized[(slot.source, key)] = slot.output
        holds[slot.output] = key
    write_plan(out, formats, rounding)
    return attach_functions(out)


def _become_identity(node: NodeProto, source: str) -> None:
    output, name = node.output[0], node.name
    node.Clear()
    node.op_type = "Identity"
    node.name = name
    node.input.append(source)
    node.output.append(output)


def _become_quantizer(node: NodeProto, source: str, fmt: Format, rounding: str,
                      rank: int | None) -> None:
    node.CopyFrom(make_quantize_node(source, node.output[0], fmt, rounding=rounding,
                                     name=node.name, rank=rank))
