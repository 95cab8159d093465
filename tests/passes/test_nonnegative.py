"""passes.nonnegative: which activation groups get unsigned formats, and that doing so is exact."""

from __future__ import annotations

import numpy as np
from onnx import helper

from ristretto_onnx.data import load_dataset
from ristretto_onnx.data.datasets import ArrayDataset
from ristretto_onnx.data.preprocess import Preprocess
from ristretto_onnx.formats import Fixed, UFixed
from ristretto_onnx.passes.analysis.concat_ties import concat_ties
from ristretto_onnx.passes.nonnegative import (input_is_nonnegative, nonnegative_tensors, relu_measure,
                                               unsigned_groups)
from ristretto_onnx.passes.pipeline import prepare
from ristretto_onnx.quantize import QuantizeOptions, quantize
from ristretto_onnx.runtime.session import create_session

from tests import builders as synth


def groups_of(m, inputs=()):
    p = prepare(m)
    return unsigned_groups(p.float_model, p.layers, inputs=inputs, ties=concat_ties(p.float_model, p.layers))


def test_relu_makes_the_output_and_the_next_input_unsigned():
    assert groups_of(synth.conv_relu_conv()) == {"conv1/outputs", "conv2/inputs"}
    assert groups_of(synth.conv_relu_conv(), inputs=["x"]) == {"conv1/inputs", "conv1/outputs", "conv2/inputs"}
    assert groups_of(synth.conv_conv()) == frozenset()


def test_sign_keeping_ops_propagate_and_negative_constants_stop():
    inits = [synth.init("w", synth.weights((4, 3, 3, 3), 1)), synth.init("w2", synth.weights((2, 4, 1, 1), 2)),
             synth.init("pos", np.float32(0.5)), synth.init("neg", np.float32(-0.5)), synth.init("lo", 0.0),
             synth.init("hi", 6.0)]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["r"], name="relu6"),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Add", ["p", "pos"], ["a"]),
             helper.make_node("Add", ["p", "neg"], ["b"]),
             helper.make_node("Conv", ["a", "w2"], ["y1"], name="conv_a"),
             helper.make_node("Conv", ["b", "w2"], ["y2"], name="conv_b"),
             helper.make_node("Add", ["y1", "y2"], ["y"])]
    m = synth.model(nodes, inits, y_shape=("N", 2, 4, 4))
    known = nonnegative_tensors(m)
    assert {"r", "p", "a"} <= known and not {"c", "b", "y"} & known
    assert groups_of(m) == {"conv/outputs", "conv_a/inputs"}


def test_relu_measure_points_at_the_relu_output():
    p = prepare(synth.conv_relu_conv())
    assert relu_measure(p.float_model, p.layers) == {"conv1/outputs": "r1"}


def test_network_input_is_nonnegative_only_for_raw_pixels_with_a_sign_keeping_preprocessing():
    pixels = np.zeros((4, 8, 8, 3), np.uint8)
    assert input_is_nonnegative(ArrayDataset(pixels, None, Preprocess(scale=1 / 255), "px"))
    assert not input_is_nonnegative(ArrayDataset(pixels, None, Preprocess(scale=1 / 255, mean=(0.5,)), "px"))
    assert not input_is_nonnegative(load_dataset(np.zeros((4, 3, 8, 8), np.float32)))  # float: unknown


def test_dfp_chooses_ufixed_and_it_equals_the_signed_simulation_on_these_groups():
    """ufixed:B:F after the ReLU equals fixed:B+1:F there: the plan, and the outputs, agree."""
    m = synth.conv_relu_conv()
    x = synth.sample_input(m, batch=32, seed=3, scale=2.0)
    calib = load_dataset(x)
    on = quantize(m, QuantizeOptions(scheme="dfp", bits=6, calib_size=32, bias_correction="off"), calib)
    off = quantize(m, QuantizeOptions(scheme="dfp", bits=6, calib_size=32, unsigned=False, bias_correction="off"), calib)
    assert isinstance(on.plan["conv1/outputs"], UFixed) and isinstance(on.plan["conv2/inputs"], UFixed)
    assert isinstance(on.plan["conv1/inputs"], Fixed) and all(isinstance(f, Fixed) for f in off.plan.values() if f)
    # the same model with the signed 7-bit formats of the same fractional lengths computes the same
    plan7 = {g: Fixed(f.bits + 1, f.frac_bits) if isinstance(f, UFixed) else f for g, f in on.plan.items()}
    from ristretto_onnx.passes.pipeline import simulate
    signed7 = simulate(prepare(m), plan7)
    run = lambda model: create_session(model).run(None, {"x": x})[0]  # noqa: E731
    assert np.array_equal(run(on.model), run(signed7))
    # and it is at least as close to FP32 as the signed 6-bit plan
    ref = run(m)
    assert np.abs(run(on.model) - ref).mean() <= np.abs(run(off.model) - ref).mean()
