"""Insert one quantizer slot per group: the simulated data path of fig. 2.9, still all float.

For each layer:

* ``inputs``, ``weights`` (and ``bias``): a slot between the tensor and *this layer's* read of it,
  so a tensor shared by several layers (a SqueezeNet squeeze output, tied weights) gets one slot
  per reader and each reader may use its own format;
* ``outputs``: the node producing the layer output is renamed to write ``<output>__float`` and the
  slot writes the original name, so every reader of the output (ReLU, a residual Add, the graph
  output, the next layer's input slot) sees the quantized value, as in a Caffe layer that
  quantizes its own top blob.

Every slot starts as an ``Identity`` (float); :func:`~ristretto_onnx.passes.set_formats.set_formats`
turns slots into ``QuantizeSim`` nodes, or shares one quantizer between slots with equal formats.
Inserting once and re-planning many times is the point: a format search never rebuilds the graph.
"""

from __future__ import annotations

from collections import defaultdict

from onnx import ModelProto, NodeProto, helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.find_layers import find_layers
from ristretto_onnx.passes.graph_index import GraphIndex, unique_name
from ristretto_onnx.passes.layers import LayerSet
from ristretto_onnx.passes.slots import Slot, has_slots, write_layers, write_slots

SLOT_NODE_PREFIX = "qslot:"


def insert_quantizers(model: ModelProto, layers: LayerSet | None = None) -> ModelProto:
    """A copy of ``model`` with a float slot for every group of ``layers`` (default: all found)."""
    if has_slots(model):
        raise RistrettoError("the model already has quantizer slots; change formats with set_formats")
    if layers is None:
        layers = find_layers(model)
    out = ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    index = GraphIndex(graph)
    taken = index.all_tensor_names()
    node_names = {n.name for n in graph.node}
    by_output = {n.output[0]: n for n in graph.node if n.output}
    before: dict[int, list[NodeProto]] = defaultdict(list)
    after: dict[int, list[NodeProto]] = defaultdict(list)
    group_of_slot: dict[int, str] = {}
    rank_of_group: dict[str, int | None] = {}

    def mac_of(tensor: str, layer_name: str) -> NodeProto:
        try:
            return by_output[tensor]
        except KeyError:
            raise RistrettoError(f"layer {layer_name!r}: no node writes {tensor!r}; the layers "
                                 "were found on a different model") from None

    for layer in layers:
        mac = mac_of(layer.node_output, layer.name)
        for group in layer.groups:
            shape = layer.weight_shape if group.role == "weights" else index.shape(group.tensor)
            rank_of_group[group.id] = None if shape is None else len(shape)
            slot_name = unique_name(f"{SLOT_NODE_PREFIX}{group.id}", node_names)
            if group.role == "outputs":
                producer = mac_of(layer.output, layer.name)
                raw = unique_name(f"{layer.output}__float", taken)
                producer.output[0] = raw
                slot = _identity(raw, layer.output, slot_name)
                after[id(producer)].append(slot)
                group_of_slot[id(slot)] = group.id
                continue
            reader = mac
            if group.role == "bias" and layer.bias_node_output is not None:
                reader = mac_of(layer.bias_node_output, layer.name)
            positions = [i for i, name in enumerate(reader.input) if name == group.tensor]
            if not positions:
                raise RistrettoError(f"layer {layer.name!r}: {group.tensor!r} is not an input of "
                                     f"node {reader.name!r}")
            quantized = unique_name(f"{group.tensor}__{group.role}_q", taken)
            for i in positions:
                reader.input[i] = quantized
            slot = _identity(group.tensor, quantized, slot_name)
            before[id(reader)].append(slot)
            group_of_slot[id(slot)] = group.id

    nodes: list[NodeProto] = []
    for node in graph.node:
        nodes.extend(before.get(id(node), ()))
        nodes.append(node)
        nodes.extend(after.get(id(node), ()))
    slots = tuple(Slot(g, n.name, n.input[0], n.output[0], rank_of_group[g])
                  for n in nodes if (g := group_of_slot.get(id(n))) is not None)
    del graph.node[:]
    graph.node.extend(nodes)
    write_slots(out, slots)
    write_layers(out, layers)
    return out


def _identity(source: str, output: str, name: str) -> NodeProto:
    return helper.make_node("Identity", [source], [output], name=name)

