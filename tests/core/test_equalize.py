"""passes.equalize on the synthetic MobileNet: exact in FP32, balanced channel ranges."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ristretto_onnx.passes.equalize import equalize
from ristretto_onnx.passes.pipeline import prepare
from ristretto_onnx.runtime.session import create_session

from tests.builders import mobilenet_like, random_inputs


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(".weight")}


def test_equalization_is_exact_in_fp32_and_balances_the_ranges():
    float_model = prepare(mobilenet_like()).float_model  # BN folded: every Conv has a bias
    eq = equalize(float_model)
    x = random_inputs(256)
    run = lambda m: create_session(m).run(None, {"x": x})[0]  # noqa: E731
    ref, got = run(float_model), run(eq)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.995
    # every ReLU6 but the last became a per-channel clip (Relu, Min)
    ops = [n.op_type for n in eq.graph.node]
    assert ops.count("Clip") == 1 and ops.count("Min") == 6 and ops.count("Relu") == 6
    before, after = _weights(float_model), _weights(eq)
    # the depthwise weights' per-channel ranges: far less spread after
    for name in ("b0.dw.weight", "b1.dw.weight", "b2.dw.weight"):
        def spread(w):
            r = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
            r = r[r > 0]
            return r.max() / r.min()
        assert spread(after[name]) < spread(before[name]) / 2, name
    # a pair's shared channel has the same range on both sides (the last sweep's pair exactly)
    a, b = after["b2.dw.weight"], after["b2.pw.weight"]
    ra = np.abs(a.reshape(a.shape[0], -1)).max(axis=1)
    rb = np.abs(b).max(axis=(0, 2, 3))
    live = (ra > 0) & (rb > 0)
    np.testing.assert_allclose(ra[live], rb[live], rtol=1e-5)


def test_nothing_to_equalize_leaves_the_model_alone():
    from tests import builders as synth

    m = synth.flatten_gemm()  # Conv -> MaxPool -> Gemm: no Conv pair
    assert equalize(m) == m


def test_per_tensor_8_bit_weights_keep_more_agreement_with_equalization():
    """quantize --equalize: per-tensor 8-bit weights (activations float) agree with FP32 more."""
    from ristretto_onnx.data import load_dataset
    from ristretto_onnx.quantize import QuantizeOptions, quantize

    m = mobilenet_like()
    x = random_inputs(512)
    ref = create_session(m).run(None, {"x": x})[0].argmax(1)
    agree = {}
    for eq in (False, True):
        r = quantize(m, QuantizeOptions(scheme="dfp", weight_bits=6, act_bits=32, calib_size=256, equalize=eq,
                                        bias_correction="off"), load_dataset(x[:256]))
        agree[eq] = (create_session(r.model).run(None, {"x": x})[0].argmax(1) == ref).mean()
    assert agree[True] >= agree[False], agree


def _bias_dominated_pair():
    """x -> Conv A (1x1, 4 channels) -> ReLU6 -> Conv B (1x1) -> y. A's channel 0 has weights 100
    times smaller than the others but a bias of 3: its activation is as large as theirs, while
    weights alone say it is small (the weights-only rule scales it up)."""
    from onnx import helper

    from tests import builders as synth

    r = np.random.default_rng(5)
    wa = r.standard_normal((4, 3, 1, 1)).astype(np.float32)
    wa[0] *= 0.01
    ba = np.array([3.0, 0.0, 0.0, 0.0], np.float32)
    wb = (r.standard_normal((4, 4, 1, 1)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"),
             helper.make_node("Clip", ["a", "lo", "hi"], ["r"], name="relu6"),
             helper.make_node("Conv", ["r", "wb"], ["y"], name="B")]
    inits = [synth.init(k, v) for k, v in (("wa", wa), ("ba", ba), ("wb", wb), ("lo", np.float32(0)),
                                           ("hi", np.float32(6)))]
    return synth.model(nodes, inits)


def test_measured_link_ranges_keep_the_activation_channels_balanced():
    """With the link's channel maxima (calibration data), no activation channel grows beyond the
    level the weights and the link meet at; the weights-only rule blows channel 0 up. Both exact."""
    from ristretto_onnx.data import load_dataset
    from ristretto_onnx.link_ranges import link_max
    from ristretto_onnx.passes.equalize import links

    m = _bias_dominated_pair()
    x = np.random.default_rng(6).standard_normal((64, 3, 8, 8)).astype(np.float32)
    assert links(m) == ["r"]
    before = link_max(m, load_dataset(x))["r"]
    data_free, measured = equalize(m), equalize(m, link_max={"r": before})
    ref = create_session(m).run(None, {"x": x})[0]
    for eq in (data_free, measured):
        np.testing.assert_allclose(create_session(eq).run(None, {"x": x})[0], ref, rtol=1e-4,
                                   atol=1e-4 * np.abs(ref).max())
    grown = {k: link_max(eq, load_dataset(x), names=["r"])["r"].max() / before.max()
             for k, eq in (("data-free", data_free), ("measured", measured))}
    assert grown["data-free"] > 2.5 and grown["measured"] < 1.2, grown
