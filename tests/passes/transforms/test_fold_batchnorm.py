"""fold_batchnorm: exact float64 folding, only when the BN is the Conv's sole consumer."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from ristretto_onnx.passes.transforms.fold_batchnorm import fold_batchnorm
from ristretto_onnx.runtime.session import create_session
from tests import builders as synth


def _run(m, x):
    return create_session(m, optimize=False).run(None, {"x": x})[0]


def _ops(m):
    return [n.op_type for n in m.graph.node]


def _init(m, name):
    return numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == name))


def _rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_residual_block_is_folded_exactly_and_outputs_agree():
    m = synth.residual_block()
    before = m.SerializeToString()
    out = fold_batchnorm(m)
    assert m.SerializeToString() == before  # pure: the input is untouched
    assert "BatchNormalization" not in _ops(out)
    assert _ops(out) == ["Conv", "Relu", "Conv", "Add", "Relu"]
    # The folded weights are the float64 formula rounded once to float32.
    w = _init(m, "w1").astype(np.float64)
    g, b, mu, var = (_init(m, f"bn1.{p}").astype(np.float64) for p in ("gamma", "beta", "mean", "var"))
    s = g / np.sqrt(var + np.float64(np.float32(1e-5)))
    conv1 = out.graph.node[0]
    np.testing.assert_array_equal(_init(out, conv1.input[1]), (w * s[:, None, None, None]).astype(np.float32))
    np.testing.assert_array_equal(_init(out, conv1.input[2]), ((0 - mu) * s + b).astype(np.float32))
    # Consumers still read the BN's output name; the BN parameters are gone.
    assert conv1.output[0] == "b1"
    assert not any(t.name.startswith("bn1.") for t in out.graph.initializer)
    x = synth.sample_input(m, batch=4)
    assert _rel_err(_run(out, x), _run(m, x)) < 1e-5


def test_conv_bias_is_folded_too():
    m = synth.residual_block()
    m.graph.initializer.append(synth.init("cb", synth.weights((3,), 11, 0.5)))
    m.graph.node[0].input.append("cb")
    out = fold_batchnorm(m)
    x = synth.sample_input(m, batch=3)
    assert _rel_err(_run(out, x), _run(m, x)) < 1e-5
    assert "cb" in [t.name for t in out.graph.initializer]  # private bias: overwritten in place


def test_depthwise_and_grouped_convs_fold_per_output_channel():
    m = synth.depthwise_grouped()
    out = fold_batchnorm(m)
    assert _ops(out) == ["Conv", "Conv"]
    assert out.graph.node[1].output[0] == "y"  # the graph output keeps its name
    x = synth.sample_input(m, batch=2)
    assert _rel_err(_run(out, x), _run(m, x)) < 1e-5


def test_bn_that_is_not_the_sole_consumer_is_left_alone():
    m = synth.bn_not_foldable()
    out = fold_batchnorm(m)
    assert _ops(out) == _ops(m)
    assert out.SerializeToString() == m.SerializeToString()


def test_shared_weights_get_a_folded_copy_and_the_original_stays():
    """Two Convs share w; each has its own BN. Each gets its own folded weights."""
    c = 3
    inits = [synth.init("w", synth.weights((c, c, 3, 3), 1))] + synth.bn_params("bnA", c, 2) \
        + synth.bn_params("bnB", c, 3)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["ca"], name="convA", pads=[1, 1, 1, 1]),
        synth.bn("bnA", "ca", "a"),
        helper.make_node("Conv", ["x", "w"], ["cb"], name="convB", pads=[1, 1, 1, 1]),
        synth.bn("bnB", "cb", "b"),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    m = synth.model(nodes, inits)
    out = fold_batchnorm(m)
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] != convs[1].input[1]
    assert "w" not in {convs[0].input[1], convs[1].input[1]}
    assert "w" not in [t.name for t in out.graph.initializer]  # no longer used: dropped
    x = synth.sample_input(m)
    assert _rel_err(_run(out, x), _run(m, x)) < 1e-5


def test_training_mode_and_non_constant_parameters_are_not_folded():
    m = synth.residual_block()
    m.graph.node[1].attribute.append(helper.make_attribute("training_mode", 1))
    assert _ops(fold_batchnorm(m)).count("BatchNormalization") == 1
    m = synth.residual_block()
    # bn2's mean becomes a runtime input: not foldable.
    m.graph.input.append(helper.make_tensor_value_info("bn2.mean", 1, [3]))
    m.graph.initializer.remove(next(t for t in m.graph.initializer if t.name == "bn2.mean"))
    assert _ops(fold_batchnorm(m)).count("BatchNormalization") == 1


def test_weights_that_are_graph_inputs_are_not_overwritten():
    m = synth.residual_block()
    m.graph.input.append(helper.make_tensor_value_info("w1", 1, [3, 3, 3, 3]))
    out = fold_batchnorm(m)
    assert out.graph.node[0].input[1] != "w1"
    np.testing.assert_array_equal(_init(out, "w1"), _init(m, "w1"))


def test_nothing_to_fold_returns_an_equal_copy():
    m = synth.conv_relu_conv()
    out = fold_batchnorm(m)
    assert out == m and out is not m
