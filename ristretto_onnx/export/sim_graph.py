"""Read a simulated model back: its quantizers, their formats and roles, and its layers.

Every export starts from the simulated model (the contract, thesis fig. 2.9: quantized layer
inputs and weights, float32 accumulation, quantized layer outputs). This module answers, once and
read-only, what the exporters and the hardware report need to know about it:

* each ``QuantizeSim`` node: the tensor it reads, its format object
  (:mod:`ristretto_onnx.formats`), its rounding, the constant value it quantizes (weights and
  biases; ``None`` for activations), the rank of that tensor, and which groups
  (``conv1/weights``) it implements: one node may serve several slots when ``set_formats``
  shared a quantizer;
* the layers (Conv, ConvTranspose, Gemm, MatMul) with their groups and the plan, from the
  ``metadata_props`` the passes wrote (``ristretto.layers``, ``ristretto.plan``,
  ``ristretto.slots``).

A model with ``QuantizeSim`` nodes but without that metadata (made by hand) still exports: its
quantizers are listed with no groups, and the report says it needs the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Format
from ristretto_onnx.ops import is_quantize_sim, node_format
from ristretto_onnx.passes.layers import LayerSet, split_group_id
from ristretto_onnx.passes.plan import GroupFormat
from ristretto_onnx.passes.slots import (LAYERS_KEY, PLAN_KEY, ROUNDING_KEY, SLOTS_KEY, get_metadata, read_layers,
                                         read_plan, read_slots)


@dataclass(frozen=True)
class Quantizer:
    """One ``QuantizeSim`` node of the simulated model."""

    node: str
    index: int                      # position in graph.node
    input: str
    output: str
    format: Format
    rounding: str
    constant: np.ndarray | None     # the float value quantized, when the input is an initializer
    rank: int | None
    groups: tuple[str, ...] = ()    # group ids whose slot reads this node's output

    @property
    def is_constant(self) -> bool:
        return self.constant is not None

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(split_group_id(g)[1] for g in self.groups))

    @property
    def role(self) -> str:
        """``weights``/``bias``/``inputs``/``outputs``, or ``activation``/``constant`` without metadata."""
        roles = self.roles
        if roles:
            return roles[0]
        return "constant" if self.is_constant else "activation"


@dataclass(frozen=True)
class SimGraph:
    """The quantizers, layers and plan of one simulated model (read-only)."""

    model: ModelProto
    quantizers: tuple[Quantizer, ...]
    layers: LayerSet | None
    plan: dict[str, GroupFormat]
    rounding: str

    def group_format(self, gid: str) -> GroupFormat:
        return self.plan.get(gid)

    def quantizer_of(self, gid: str) -> Quantizer | None:
        for q in self.quantizers:
            if gid in q.groups:
                return q
        return None


def read_sim(model: ModelProto) -> SimGraph:
    """Index a simulated model; a clear error when it has no ``QuantizeSim`` node at all."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    ranks = _ranks(model)
    if get_metadata(model, SLOTS_KEY) is not None:
        for slot in read_slots(model):
            if slot.rank is not None:
                ranks.setdefault(slot.source, slot.rank)
    raw: list[Quantizer] = []
    for i, node in enumerate(graph.node):
        if not is_quantize_sim(node):
            continue
        fmt, rounding = node_format(node)
        init = inits.get(node.input[0])
        value = numpy_helper.to_array(init).astype(np.float32) if init is not None else None
        rank = value.ndim if value is not None else ranks.get(node.input[0])
        raw.append(Quantizer(node.name, i, node.input[0], node.output[0], fmt, rounding, value, rank))
    if not raw:
        raise RistrettoError("the model has no QuantizeSim node: give a simulated model "
                             "(written by ristretto-onnx quantize or compress)")
    layers = read_layers(model) if get_metadata(model, LAYERS_KEY) is not None else None
    plan = read_plan(model) if get_metadata(model, PLAN_KEY) is not None else {}
    groups_of = _groups_of_outputs(model) if get_metadata(model, SLOTS_KEY) is not None else {}
    quantizers = tuple(
        Quantizer(q.node, q.index, q.input, q.output, q.format, q.rounding, q.constant, q.rank,
                  tuple(groups_of.get(q.output, ())))
        for q in raw)
    return SimGraph(model, quantizers, layers, plan, get_metadata(model, ROUNDING_KEY) or "nearest_even")


def _groups_of_outputs(model: ModelProto) -> dict[str, list[str]]:
    """``{QuantizeSim output: [group ids]}``, following the Identity slots set_formats shared."""
    by_output = {n.output[0]: n for n in model.graph.node if n.output}
    out: dict[str, list[str]] = {}
    for slot in read_slots(model):
        name, seen = slot.output, set()
        while name in by_output and name not in seen:
            seen.add(name)
            node = by_output[name]
            if is_quantize_sim(node):
                out.setdefault(name, []).append(slot.group)
                break
            if node.op_type != "Identity" or not node.input:
                break
            name = node.input[0]
    return out


def _ranks(model: ModelProto) -> dict[str, int]:
    ranks: dict[str, int] = {}
    g = model.graph
    for vi in (*g.input, *g.output, *g.value_info):
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    return ranks
