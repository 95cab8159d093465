"""Insert one quantizer slot per group: the simulated data path of fig. 2.9, still all float.

For each layer:

* ``inputs``, ``weights`` (and ``bias``): a slot between the tensor and *this layer's* read of it,
  so a tensor shared by several layers (a SqueezeNet squeeze output, tied weights) gets one slot
  per reader and each reader may use its own format;
* ``outputs``: the node producing the layer output is renamed to write ``<output>__float`` and the
  slot writes the original name, so every reader of the output (ReLU, a residual Add, the graph
  output, the next layer's input slot) sees the quantized value, as in a Caffe layer that
  quantizes its own top blob.

Every slot starts as an ``Identity`` (float); :func:`~ristretto_onnx.passes.transforms.set_formats.set_formats`
turns slots into ``QuantizeSim`` nodes, or shares one quantizer between slots with equal formats.
Inserting once and re-planning many times is the point: a format search never rebuilds the graph.
"""

from __future__ import annotations

from collections import defaultdict

import onnx_graphsurgeon as gs
from onnx import ModelProto

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.analysis.find_layers import find_layers
from ristretto_onnx.passes.contract import PassResult, Transformation
from ristretto_onnx.passes.graph import export_model, import_graph, static_shape, tensor_names, unique_name
from ristretto_onnx.passes.layers import LayerSet
from ristretto_onnx.passes.slots import Slot, has_slots, write_layers, write_slots

SLOT_NODE_PREFIX = "qslot:"


class InsertQuantizers(Transformation):
    """Insert one float slot per group of ``layers``; the slot table is left in ``self.slots``."""

    name = "insert_quantizers"

    def __init__(self, layers: LayerSet) -> None:
        self.layers = layers
        self.slots: tuple[Slot, ...] = ()

    def apply(self, graph: gs.Graph) -> PassResult:
        taken = tensor_names(graph)
        node_names = {n.name for n in graph.nodes}
        by_output = {n.outputs[0].name: n for n in graph.nodes if n.outputs}
        before: dict[int, list[gs.Node]] = defaultdict(list)
        after: dict[int, list[gs.Node]] = defaultdict(list)
        group_of_slot: dict[int, str] = {}
        rank_of_group: dict[str, int | None] = {}

        def mac_of(tensor: str, layer_name: str) -> gs.Node:
            try:
                return by_output[tensor]
            except KeyError:
                raise RistrettoError(f"layer {layer_name!r}: no node writes {tensor!r}; the layers "
                                     "were found on a different model") from None

        for layer in self.layers:
            mac = mac_of(layer.node_output, layer.name)
            for group in layer.groups:
                slot_name = unique_name(f"{SLOT_NODE_PREFIX}{group.id}", node_names)
                if group.role == "outputs":
                    producer = mac_of(layer.output, layer.name)
                    out = producer.outputs[0]
                    rank_of_group[group.id] = _rank(static_shape(out))
                    raw = gs.Variable(unique_name(f"{layer.output}__float", taken))
                    producer.outputs[0] = raw
                    slot = gs.Node("Identity", slot_name, inputs=[raw], outputs=[out])
                    after[id(producer)].append(slot)
                    group_of_slot[id(slot)] = group.id
                    continue
                reader = mac
                if group.role == "bias" and layer.bias_node_output is not None:
                    reader = mac_of(layer.bias_node_output, layer.name)
                positions = [i for i, t in enumerate(reader.inputs) if t.name == group.tensor]
                if not positions:
                    raise RistrettoError(f"layer {layer.name!r}: {group.tensor!r} is not an input "
                                         f"of node {reader.name!r}")
                source = reader.inputs[positions[0]]
                rank_of_group[group.id] = (len(layer.weight_shape) if group.role == "weights"
                                           else _rank(static_shape(source)))
                quantized = gs.Variable(unique_name(f"{group.tensor}__{group.role}_q", taken))
                for i in positions:
                    reader.inputs[i] = quantized
                slot = gs.Node("Identity", slot_name, inputs=[source], outputs=[quantized])
                before[id(reader)].append(slot)
                group_of_slot[id(slot)] = group.id

        nodes: list[gs.Node] = []
        for node in graph.nodes:
            nodes.extend(before.get(id(node), ()))
            nodes.append(node)
            nodes.extend(after.get(id(node), ()))
        self.slots = tuple(Slot(g, n.name, n.inputs[0].name, n.outputs[0].name, rank_of_group[g])
                           for n in nodes if (g := group_of_slot.get(id(n))) is not None)
        graph.nodes = nodes
        return PassResult(graph, bool(self.slots))


def insert_quantizers(model: ModelProto, layers: LayerSet | None = None) -> ModelProto:
    """A copy of ``model`` with a float slot for every group of ``layers`` (default: all found)."""
    if has_slots(model):
        raise RistrettoError("the model already has quantizer slots; change formats with set_formats")
    graph = import_graph(model)
    if layers is None:
        layers = find_layers(graph)
    return annotate(graph, model, layers)


def annotate(graph: gs.Graph, source: ModelProto, layers: LayerSet) -> ModelProto:
    """Export ``graph`` with slots for ``layers`` inserted, the slot table and layers recorded."""
    insert = InsertQuantizers(layers)
    insert(graph)
    out = export_model(graph, source)
    write_slots(out, insert.slots)
    write_layers(out, layers)
    return out


def _rank(shape) -> int | None:
    return None if shape is None else len(shape)
