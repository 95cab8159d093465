"""clip_bounds: layer outputs read only by a Clip with constant bounds (ReLU6)."""

from __future__ import annotations

from onnx import helper

from ristretto_onnx.passes.analysis.clip_bounds import clip_bounds
from ristretto_onnx.passes.pipeline import prepare

from tests import builders as synth


def conv_then(act_nodes, extra_inits=()):
    inits = [synth.init("w", synth.weights((4, 3, 3, 3), 1))] + list(extra_inits)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])] + act_nodes
    return synth.model(nodes, inits)


def bounds_of(m):
    p = prepare(m)
    return clip_bounds(p.float_model, p.layers)


def test_relu6_as_clip_with_constant_inputs():
    m = conv_then([helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="relu6")],
                  [synth.init("lo", 0.0), synth.init("hi", 6.0)])
    (gid, b), = bounds_of(m).items()
    assert gid == "conv/outputs" and (b.lo, b.hi, b.tensor, b.max_abs) == (0.0, 6.0, "y", 6.0)


def test_clip_with_only_a_max():
    m = conv_then([helper.make_node("Clip", ["c", "", "hi"], ["y"], name="clip")], [synth.init("hi", 3.0)])
    b = bounds_of(m)["conv/outputs"]
    assert b.lo is None and b.max_abs == 3.0


def test_relu_runtime_bounds_and_shared_outputs_are_not_bounds():
    assert bounds_of(conv_then([helper.make_node("Relu", ["c"], ["y"], name="relu")])) == {}
    runtime = conv_then([helper.make_node("Clip", ["c", "c", "hi"], ["y"], name="clip")], [synth.init("hi", 6.0)])
    assert bounds_of(runtime) == {}
    shared = conv_then([helper.make_node("Clip", ["c", "lo", "hi"], ["r"], name="clip"),
                        helper.make_node("Add", ["r", "c"], ["y"], name="add")],
                       [synth.init("lo", 0.0), synth.init("hi", 6.0)])
    assert bounds_of(shared) == {}


def test_per_channel_relu6_of_equalization_is_a_bound_at_its_largest_clip():
    """passes.equalize writes ReLU6 as Relu -> Min(hi_c): measured after the Min, up to max hi_c."""
    import numpy as np

    hi = np.array([6.0, 1.5, 12.0, 3.0], np.float32).reshape(4, 1, 1)
    m = conv_then([helper.make_node("Relu", ["c"], ["r"], name="relu"),
                   helper.make_node("Min", ["r", "hi"], ["y"], name="clip")], [synth.init("hi", hi)])
    b = bounds_of(m)["conv/outputs"]
    assert (b.lo, b.hi, b.tensor) == (0.0, 12.0, "y")
    negative = conv_then([helper.make_node("Relu", ["c"], ["r"], name="relu"),
                          helper.make_node("Min", ["r", "hi"], ["y"], name="clip")], [synth.init("hi", -hi)])
    assert bounds_of(negative) == {}
