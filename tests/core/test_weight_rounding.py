"""ristretto_onnx.weight_rounding: weights rounded on their format's grid for the layer's output
error (error feedback through the input Hessian) beat round-to-nearest on the calibration inputs,
stay on the grid and in range, and the weight quantizer is an exact no-op on them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from ristretto_onnx.data import load_dataset
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Fixed, PerChannel, Pow2
from ristretto_onnx.passes.graph import constant_value, import_graph
from ristretto_onnx.passes.pipeline import prepare
from ristretto_onnx.quantize import QuantizeOptions, quantize
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.weight_rounding import adaptive_weights, layer_hessians, with_weights

from tests import builders as synth


def _conv_layer(group: int = 1, channels: int = 8, out: int = 16, **attrs) -> onnx.ModelProto:
    """One Conv 3x3, stride 2, pad 1 (or ``attrs``), grouped by ``group``, no bias."""
    w = synth.weights((out, channels // group, 3, 3), 5)
    attrs = attrs or dict(pads=[1, 1, 1, 1], strides=[2, 2])
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=group, **attrs)
    return synth.model([node], [synth.init("w", w)], x_shape=("N", channels, 12, 12))


def _smooth_input(channels: int, n: int = 32, seed: int = 0) -> np.ndarray:
    """Correlated pixels and channels (as in images): what makes rounding choices interact."""
    r = np.random.default_rng(seed)
    base = r.standard_normal((n, 1, 6, 6)).repeat(2, 2).repeat(2, 3)
    return (base * r.uniform(0.5, 1.5, (1, channels, 1, 1)) + 0.3 * r.standard_normal((n, channels, 12, 12))
            ).astype(np.float32)


def _output_mse(model: onnx.ModelProto, p, weights, x: np.ndarray) -> float:
    ref = create_session(p.float_model).run(None, {"x": x})[0]
    got = create_session(with_weights(p.float_model, p.layers, weights)).run(None, {"x": x})[0]
    return float(np.mean(np.square(got.astype(np.float64) - ref)))


def _nearest(p, plan) -> dict[str, np.ndarray]:
    graph = import_graph(p.float_model)
    tensors = graph.tensors()
    return {l.name: plan[f"{l.name}/weights"].quantize(constant_value(tensors[l.weight])) for l in p.layers}


@pytest.mark.parametrize("group", [1, 2, 8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_adaptive_rounding_lowers_the_layer_output_error_and_stays_on_the_grid(group, per_channel):
    m = _conv_layer(group=group)
    p = prepare(m)
    x = _smooth_input(8)
    layer = p.layers.layers[0]
    fmt = (PerChannel(tuple(Fixed(4, 3 + (c % 2)) for c in range(16)), axis=0) if per_channel else Fixed(4, 3))
    plan = {f"{layer.name}/weights": fmt}
    hessians = layer_hessians(p.float_model, p.layers, [x[:16], x[16:]], rows=10_000, images=32)
    assert len(hessians[layer.name]) == group
    rounded = adaptive_weights(p.float_model, p.layers, plan, hessians)
    q = rounded[layer.name]
    assert q.dtype == np.float32 and q.shape == layer.weight_shape
    np.testing.assert_array_equal(fmt.quantize(q), q)  # on the grid: the weight quantizer is a no-op
    assert np.all(q >= fmt.min_value) and np.all(q <= fmt.max_value)
    nearest = _nearest(p, plan)
    assert not np.array_equal(q, nearest[layer.name])
    assert _output_mse(m, p, rounded, x) < 0.9 * _output_mse(m, p, nearest, x)


@pytest.mark.parametrize("attrs", [{}, dict(auto_pad="SAME_UPPER", strides=[2, 2]),
                                   dict(auto_pad="SAME_LOWER", strides=[2, 2]), dict(dilations=[2, 2], pads=[2, 1, 2, 1]), dict(pads=[0, 1, 2, 0])])
def test_hessian_of_every_position_gives_the_sum_of_squared_outputs(attrs):
    """With every output position sampled, ``tr(W H W^T)`` per group is the sum of the squared
    convolution outputs: the im2col rows (pads, strides, dilations, groups) are the convolution's."""
    m = _conv_layer(group=2, **attrs)
    p = prepare(m)
    x = _smooth_input(8, n=4)
    hs = layer_hessians(p.float_model, p.layers, [x], rows=1_000, images=4)[p.layers.layers[0].name]
    w = constant_value(import_graph(p.float_model).tensors()["w"]).astype(np.float64).reshape(16, -1)
    y = create_session(p.float_model).run(None, {"x": x})[0].astype(np.float64)
    for g, h in enumerate(hs):
        wg = w[g * 8:(g + 1) * 8]
        assert np.trace(wg @ h @ wg.T) == pytest.approx(np.square(y[:, g * 8:(g + 1) * 8]).sum(), rel=1e-6)


def test_shared_weights_keep_nearest():
    m = synth.shared_weights()
    p = prepare(m)
    x = synth.sample_input(m, batch=16, seed=3)
    plan = {f"{l.name}/weights": Fixed(4, 3) for l in p.layers}
    assert len({l.weight for l in p.layers}) < len(p.layers)
    assert adaptive_weights(p.float_model, p.layers, plan, layer_hessians(p.float_model, p.layers, [x])) == {}


def test_gemm_and_pow2_weights():
    m = synth.flatten_gemm()
    p = prepare(m)
    x = synth.sample_input(m, batch=64, seed=3)
    hessians = layer_hessians(p.float_model, p.layers, [x])
    plan = {f"{l.name}/weights": Fixed(4, 3) for l in p.layers}
    rounded = adaptive_weights(p.float_model, p.layers, plan, hessians)
    assert set(rounded) == {l.name for l in p.layers}
    for q in rounded.values():
        np.testing.assert_array_equal(Fixed(4, 3).quantize(q), q)
    # power-of-two weights keep the plan's own rounding
    pow2 = {f"{l.name}/weights": Pow2(-8, -1) for l in p.layers}
    assert adaptive_weights(p.float_model, p.layers, pow2, hessians) == {}


def test_quantize_weight_rounding_option():
    m = synth.conv_relu_conv()
    r = np.random.default_rng(3)
    x = (2 * r.standard_normal((64, 1, 8, 8)) + 0.5 * r.standard_normal((64, 3, 8, 8))).astype(np.float32)
    calib = load_dataset(x)
    kw = dict(scheme="dfp", bits=4, calib_size=64, bias_size=64, score_size=64, bias_correction="weights")
    res = quantize(m, QuantizeOptions(weight_rounding="adaptive", **kw), calib)
    near = quantize(m, QuantizeOptions(weight_rounding="nearest", **kw), calib)
    assert res.options.weight_rounding == "adaptive" and near.options.weight_rounding == "nearest"
    changed = 0
    for layer in res.layers:
        fmt = res.plan[f"{layer.name}/weights"]
        w = onnx.numpy_helper.to_array(next(t for t in res.model.graph.initializer if t.name == layer.weight))
        np.testing.assert_array_equal(fmt.quantize(w), w)  # the model holds the rounded weights
        w0 = onnx.numpy_helper.to_array(next(t for t in near.model.graph.initializer if t.name == layer.weight))
        changed += int(not np.array_equal(fmt.quantize(w0), w))
    assert changed >= 1
    auto = quantize(m, QuantizeOptions(weight_rounding="auto", **kw), calib)
    assert auto.options.weight_rounding in ("nearest", "adaptive")
    with pytest.raises(RistrettoError, match="weight-rounding"):
        QuantizeOptions(weight_rounding="up", **kw)
    pow2 = quantize(m, QuantizeOptions(scheme="pow2", bits=4, weight_rounding="adaptive"), calib)
    assert pow2.options.weight_rounding == "nearest" and "weight_rounding" not in pow2.seconds


@pytest.mark.slow
def test_lenet_4_4_4_adaptive_rounding_holds_98_5_and_auto_keeps_nearest(zoo_env):
    """LeNet dfp 4/4/4 (calibrated on 500 training images, 10,000 test images): adaptive rounding
    brings the outputs closer to FP32's on the test images (KL 0.00823 against 0.00900 measured)
    and holds 98.5 % (98.51 %); ``auto`` keeps nearest there (its bias-corrected outputs are the
    closer on the calibration images: 98.55 %)."""
    from ristretto_onnx import zoo
    from ristretto_onnx.output_bias import divergence

    calib = zoo.model_dataset("lenet-mnist", "calib").subset(500, seed=0)
    test = zoo.model_dataset("lenet-mnist", "test")
    x = np.concatenate([b for b, _ in test.batches(10_000)])
    y = np.concatenate([l for _, l in test.batches(10_000)])

    def run(model):
        s = create_session(model)
        return s.run(None, {s.get_inputs()[0].name: x})[0]

    fp32 = run(str(zoo.get_model("lenet-mnist").locate()))
    res = {w: quantize("zoo:lenet-mnist", QuantizeOptions(scheme="dfp", bits=4, batch_size=32, weight_rounding=w), calib)
           for w in ("nearest", "adaptive", "auto")}
    assert res["auto"].options.weight_rounding == "nearest"
    out = {w: run(r.model) for w, r in res.items()}
    assert divergence(fp32, out["adaptive"]) < divergence(fp32, out["nearest"])
    assert (out["adaptive"].argmax(1) == y).mean() >= 0.985
    assert (out["auto"].argmax(1) == y).mean() >= 0.985
