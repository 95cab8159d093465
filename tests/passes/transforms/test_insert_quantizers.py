"""insert_quantizers: one float slot per group, the graph's meaning unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.analysis.find_layers import find_layers
from ristretto_onnx.passes.transforms.insert_quantizers import insert_quantizers
from ristretto_onnx.passes.layers import LayerSet
from ristretto_onnx.passes.load import load_model
from ristretto_onnx.passes.slots import read_layers, read_slots
from ristretto_onnx.runtime.session import create_session
from tests import builders as synth

PATTERNS = ["conv_relu_conv", "conv_conv", "residual_block", "inception", "depthwise_grouped",
            "option_a_shortcut", "flatten_gemm", "matmul_add", "shared_weights", "constant_weights",
            "conv_transpose"]


def _run(m, x):
    return create_session(m).run(None, {"x": x})[0]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_group_gets_one_identity_slot_and_outputs_are_unchanged(pattern):
    m = load_model(getattr(synth, pattern)())
    before = m.SerializeToString()
    layers = find_layers(m)
    out = insert_quantizers(m, layers)
    assert m.SerializeToString() == before
    onnx.checker.check_model(out)
    slots = read_slots(out)
    assert sorted(s.group for s in slots) == sorted(layers.group_ids)
    position = {n.name: i for i, n in enumerate(out.graph.node)}
    assert [position[s.node] for s in slots] == sorted(position[s.node] for s in slots)  # graph order
    slot_nodes = {n.name: n for n in out.graph.node if n.name in {s.node for s in slots}}
    assert all(n.op_type == "Identity" for n in slot_nodes.values())
    assert read_layers(out) == layers
    x = synth.sample_input(m)
    np.testing.assert_array_equal(_run(out, x), _run(m, x))


def test_layer_reads_its_slots_and_the_output_slot_keeps_the_output_name():
    out = insert_quantizers(load_model(synth.conv_relu_conv()))
    slots = {s.group: s for s in read_slots(out)}
    conv2 = next(n for n in out.graph.node if n.name == "conv2")
    assert list(conv2.input) == [slots["conv2/inputs"].output, slots["conv2/weights"].output,
                                 slots["conv2/bias"].output]
    assert slots["conv2/outputs"].output == "y" and conv2.output[0] == slots["conv2/outputs"].source
    assert [o.name for o in out.graph.output] == ["y"]
    relu = next(n for n in out.graph.node if n.name == "relu1")
    assert relu.input[0] == "c1" == slots["conv1/outputs"].output  # Relu sees the quantized output
    assert slots["conv2/weights"].rank == 4


def test_shared_tensors_get_one_slot_per_reader():
    out = insert_quantizers(load_model(synth.inception()))
    slots = {s.group: s for s in read_slots(out)}
    assert slots["expand1x1/inputs"].source == slots["expand3x3/inputs"].source == "sr"
    assert slots["expand1x1/inputs"].output != slots["expand3x3/inputs"].output
    out = insert_quantizers(load_model(synth.shared_weights()))
    slots = {s.group: s for s in read_slots(out)}
    assert slots["fc1/weights"].source == slots["fc2/weights"].source == "w"


def test_matmul_add_bias_slot_sits_before_the_add():
    out = insert_quantizers(load_model(synth.matmul_add()))
    slots = {s.group: s for s in read_slots(out)}
    add = next(n for n in out.graph.node if n.name == "fc1_bias")
    assert slots["fc1/bias"].output in add.input
    assert slots["fc1/outputs"].source == add.output[0] and slots["fc1/outputs"].output == "a1"


def test_subset_of_layers_and_errors():
    m = load_model(synth.flatten_gemm())
    layers = find_layers(m)
    out = insert_quantizers(m, LayerSet(layers.layers[1:]))
    assert {s.group.split("/")[0] for s in read_slots(out)} == {"fc1", "fc2"}
    with pytest.raises(RistrettoError, match="already has quantizer slots"):
        insert_quantizers(out)
    with pytest.raises(RistrettoError, match="different model"):
        insert_quantizers(load_model(synth.conv_relu_conv()), layers)
