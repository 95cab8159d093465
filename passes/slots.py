"""Quantizer slots: where an annotated model keeps its quantization points.

:func:`~ristretto_onnx.passes.transforms.insert_quantizers.insert_quantizers` gives every group one *slot*:
a single node between the group's tensor (``source``) and the readers of its quantized value
(``output``). Which node sits in a slot is decided by
:func:`~ristretto_onnx.passes.transforms.set_formats.set_formats`: a ``QuantizeSim`` of ``source``, or an
``Identity`` when the group stays in float or another slot already produced the same quantized
values. A slot's output name never changes, so changing formats only rewrites the slot nodes.

The slot table, the layers and the current plan travel inside the model as ``metadata_props``
(JSON), so an annotated model saved to disk can be re-planned later by any tool. So does the list
of ReLUs the current plan made redundant (``ristretto.relus_skipped``: ReLU nodes ``set_formats``
wrote as ``Identity`` because their input cannot be negative; the next plan restores them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from onnx import ModelProto

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.layers import LayerSet
from ristretto_onnx.passes.plan import GroupFormat, plan_from_dict, plan_to_dict

SLOTS_KEY = "ristretto.slots"
LAYERS_KEY = "ristretto.layers"
PLAN_KEY = "ristretto.plan"
ROUNDING_KEY = "ristretto.rounding"
SKIPPED_RELUS_KEY = "ristretto.relus_skipped"


@dataclass(frozen=True)
class Slot:
    """One group's quantization point: node ``node`` maps ``source`` to ``output``.

    ``rank`` is the tensor's rank when known (a per-channel format with a non-negative axis
    needs it to address the axis from the end, as the op stores it).
    """

    group: str
    node: str
    source: str
    output: str
    rank: int | None = None


def get_metadata(model: ModelProto, key: str) -> str | None:
    for prop in model.metadata_props:
        if prop.key == key:
            return prop.value
    return None


def set_metadata(model: ModelProto, key: str, value: str) -> None:
    """Set ``key`` in ``model.metadata_props`` in place (callers pass their own copy)."""
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def clear_metadata(model: ModelProto, key: str) -> None:
    """Remove ``key`` from ``model.metadata_props`` in place (callers pass their own copy)."""
    keep = [p for p in model.metadata_props if p.key != key]
    if len(keep) != len(model.metadata_props):
        del model.metadata_props[:]
        model.metadata_props.extend(keep)


def has_slots(model: ModelProto) -> bool:
    return get_metadata(model, SLOTS_KEY) is not None


def read_slots(model: ModelProto) -> tuple[Slot, ...]:
    """The slot table in graph order; a clear error for a model without quantizer slots."""
    text = get_metadata(model, SLOTS_KEY)
    if text is None:
        raise RistrettoError("the model has no quantizer slots: insert quantizers first "
                             "(ristretto_onnx.passes.transforms.insert_quantizers)")
    try:
        return tuple(Slot(**s) for s in json.loads(text))
    except (ValueError, TypeError) as e:
        raise RistrettoError(f"the model's {SLOTS_KEY} metadata is corrupt: {e}") from None


def write_slots(model: ModelProto, slots: tuple[Slot, ...]) -> None:
    set_metadata(model, SLOTS_KEY, json.dumps([asdict(s) for s in slots], separators=(",", ":")))


def read_layers(model: ModelProto) -> LayerSet:
    """The layers recorded when the quantizers were inserted."""
    text = get_metadata(model, LAYERS_KEY)
    if text is None:
        raise RistrettoError("the model records no layers: insert quantizers first")
    return LayerSet.from_json(text)


def write_layers(model: ModelProto, layers: LayerSet) -> None:
    set_metadata(model, LAYERS_KEY, layers.to_json())


def read_plan(model: ModelProto) -> dict[str, GroupFormat]:
    """The plan last applied by ``set_formats`` (every group float if none was)."""
    text = get_metadata(model, PLAN_KEY)
    if text is None:
        return {s.group: None for s in read_slots(model)}
    return plan_from_dict(json.loads(text))


def write_plan(model: ModelProto, plan: dict[str, GroupFormat], rounding: str) -> None:
    set_metadata(model, PLAN_KEY, json.dumps(plan_to_dict(plan), separators=(",", ":")))
    set_metadata(model, ROUNDING_KEY, rounding)


def read_skipped_relus(model: ModelProto) -> tuple[str, ...]:
    """Names of the ReLU nodes the current plan wrote as ``Identity`` (none for most models)."""
    text = get_metadata(model, SKIPPED_RELUS_KEY)
    if text is None:
        return ()
    try:
        names = json.loads(text)
    except ValueError as e:
        raise RistrettoError(f"the model's {SKIPPED_RELUS_KEY} metadata is corrupt: {e}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RistrettoError(f"the model's {SKIPPED_RELUS_KEY} metadata is corrupt: expected a list of node names")
    return tuple(names)


def write_skipped_relus(model: ModelProto, names: tuple[str, ...]) -> None:
    if names:
        set_metadata(model, SKIPPED_RELUS_KEY, json.dumps(list(names), separators=(",", ":")))
    else:
        clear_metadata(model, SKIPPED_RELUS_KEY)
