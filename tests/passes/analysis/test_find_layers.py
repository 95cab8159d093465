"""find_layers: which nodes are layers, their tensors, kinds, biases and names."""

from __future__ import annotations

import pytest
from onnx import helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.analysis.find_layers import find_layers
from ristretto_onnx.passes.transforms.fold_batchnorm import fold_batchnorm
from ristretto_onnx.passes.layers import Layer, LayerSet, split_group_id
from ristretto_onnx.passes.load import load_model
from tests import builders as synth


def _by_name(m):
    return {layer.name: layer for layer in find_layers(load_model(m))}


def test_conv_layers_and_their_groups():
    layers = _by_name(synth.conv_relu_conv())
    conv1, conv2 = layers["conv1"], layers["conv2"]
    assert (conv1.kind, conv1.input, conv1.weight, conv1.bias, conv1.output) == ("conv", "x", "w1", "b1", "c1")
    assert conv1.weight_shape == (4, 3, 3, 3) and conv1.out_channel_axis == 0
    assert [g.id for g in conv2.groups] == ["conv2/inputs", "conv2/weights", "conv2/bias", "conv2/outputs"]
    assert [g.tensor for g in conv2.groups] == ["r1", "w2", "b2", "y"]


def test_pytorch_names_are_cleaned_and_kept_unique():
    m = synth.residual_block()
    assert list(_by_name(m)) == ["block/conv1", "block/conv2"]
    m.graph.node[3].name = "/block/conv1/Conv_1"  # a clash after cleaning
    assert list(_by_name(m)) == ["block/conv1", "block/conv1_1"]
    assert split_group_id("block/conv1_1/weights") == ("block/conv1_1", "weights")


def test_unnamed_nodes_are_named_after_their_weights():
    m = synth.conv_relu_conv()
    for n in m.graph.node:
        n.name = ""
    m.graph.initializer[0].name = "features.0.weight"
    m.graph.node[0].input[1] = "features.0.weight"
    assert list(_by_name(m)) == ["features.0", "w2"]


def test_gemm_after_flatten_or_reshape_and_the_gemm_weight_axis():
    for reshape in (False, True):
        layers = _by_name(synth.flatten_gemm(reshape))
        assert [(n, l.kind) for n, l in layers.items()] == [("conv", "conv"), ("fc1", "fc"), ("fc2", "fc")]
        assert layers["fc1"].input == "f"
        assert layers["fc1"].out_channel_axis == 0  # transB=1: W is (out, in)
        assert layers["fc2"].out_channel_axis == 1  # W is (in, out)
        assert layers["fc2"].bias == "b2"


def test_matmul_add_is_one_layer_with_a_bias():
    layers = _by_name(synth.matmul_add())
    fc1, fc2 = layers["fc1"], layers["fc2"]
    assert (fc1.bias, fc1.output, fc1.node_output, fc1.bias_node_output) == ("b1", "a1", "m1", "a1")
    assert (fc2.bias, fc2.output) == ("b2", "y")  # Add(bias, mac): operand order does not matter
    assert fc1.out_channel_axis == 1


def test_add_of_a_non_per_channel_constant_or_of_an_activation_is_not_a_bias():
    m = synth.matmul_add()
    m.graph.initializer.append(synth.init("full", synth.weights((2, 4), 5)))
    m.graph.node[1].input[1] = "full"  # (2, 4) would broadcast over the batch: not a bias
    assert _by_name(m)["fc1"].bias is None
    layers = _by_name(synth.residual_block())  # the residual Add reads an activation
    assert layers["block/conv2"].bias is None and layers["block/conv2"].output == "c2"


def test_shared_weights_make_two_layers_on_one_tensor():
    layers = _by_name(synth.shared_weights())
    assert layers["fc1"].weight == layers["fc2"].weight == "w"


def test_weights_through_constant_transpose_and_cast():
    layers = _by_name(synth.constant_weights())
    assert layers["conv"].weight == "wc" and layers["conv"].weight_shape == (4, 3, 3, 3)
    assert layers["fc1"].weight == "wtT" and layers["fc1"].weight_shape == (144, 4)
    assert layers["fc2"].weight == "w16f" and layers["fc2"].weight_shape == (4, 3)


def test_graph_inputs_with_defaults_are_weights_runtime_inputs_are_not():
    found = find_layers(load_model(synth.weights_as_inputs()))
    assert [l.name for l in found] == ["fc1"]
    assert [(s.node, s.op_type) for s in found.skipped] == [("fc2", "MatMul")]
    assert "run time" in found.skipped[0].reason


def test_attention_matmul_and_conv_with_runtime_weights_are_skipped():
    assert not find_layers(load_model(synth.attention_matmul())).layers
    m = synth.conv_relu_conv()
    m.graph.input.append(helper.make_tensor_value_info("w2", 1, [2, 4, 1, 1]))
    m.graph.initializer.remove(next(t for t in m.graph.initializer if t.name == "w2"))
    found = find_layers(load_model(m))
    assert [l.name for l in found] == ["conv1"]
    assert "not constant" in found.skipped[0].reason


def test_depthwise_grouped_conv_transpose_inception_and_option_a():
    dg = _by_name(fold_batchnorm(load_model(synth.depthwise_grouped())))
    assert dg["depthwise"].weight_shape == (4, 1, 3, 3) and dg["depthwise"].bias is not None
    deconv = _by_name(synth.conv_transpose())["deconv"]
    assert (deconv.kind, deconv.out_channel_axis, deconv.bias) == ("conv", 1, "b")
    inc = _by_name(synth.inception())
    assert inc["expand1x1"].input == inc["expand3x3"].input == "sr"
    assert list(_by_name(synth.option_a_shortcut())) == ["conv"]  # Slice/Pad are not layers


def test_layer_set_selection_and_json_round_trip():
    found = find_layers(load_model(synth.flatten_gemm()))
    assert [l.name for l in found.select(["fc"])] == ["fc1", "fc2"]
    assert [l.name for l in found.select([], ["^fc2$"])] == ["conv", "fc1"]
    assert [l.name for l in found.select(["conv", "fc2"], ["conv"])] == ["fc2"]
    with pytest.raises(RistrettoError, match="no layer matches"):
        found.select(["nothing"])
    with pytest.raises(RistrettoError, match="bad regular expression"):
        found.select(["("])
    again = LayerSet.from_json(found.to_json())
    assert again == found
    assert found.group("fc1/bias").tensor == "b1"
    assert isinstance(found["conv"], Layer)
    with pytest.raises(RistrettoError, match="bad group id"):
        split_group_id("conv/gradients")
