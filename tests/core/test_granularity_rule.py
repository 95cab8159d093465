"""Per-tensor or per-channel weights chosen layer by layer (ristretto_onnx.granularity_rule).

A depthwise conv whose channels span 2^9 must get per-channel formats and a layer whose
channels are alike must keep one format per tensor, with no flag but ``auto``; the decision
follows the expected output error, which is checked against the layer's real output error.
"""

from __future__ import annotations

import numpy as np
import pytest

from ristretto_onnx.compress import compress
from ristretto_onnx.data import load_dataset
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import PerChannel
from ristretto_onnx.granularity_rule import measure_layer_weights
from ristretto_onnx.options import CompressOptions
from ristretto_onnx.passes.pipeline import prepare
from ristretto_onnx.quantize import QuantizeOptions, quantize
from ristretto_onnx.runtime.session import create_session

from tests.builders import depthwise_pointwise


def _inputs(n: int = 128, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("scheme,bits", [("dfp", 6), ("dfp", 8), ("pow2", 4)])
def test_quantize_auto_takes_per_channel_for_the_depthwise_conv_only(scheme, bits):
    m = depthwise_pointwise()
    opts = QuantizeOptions(scheme=scheme, weight_bits=bits, act_bits=16 if scheme == "dfp" else None,
                           weight_granularity="auto", bias_correction="off", calib_size=64)
    plan = quantize(m, opts, load_dataset(_inputs())).plan
    assert isinstance(plan["dw/weights"], PerChannel)
    assert not isinstance(plan["pw/weights"], PerChannel)


def test_auto_choice_lowers_the_real_output_error_of_the_depthwise_conv():
    m = depthwise_pointwise()
    x = _inputs(64, seed=1)
    ref = create_session(prepare(m).float_model).run(None, {"x": x})[0]

    def err(granularity: str) -> float:
        opts = QuantizeOptions(scheme="dfp", weight_bits=6, act_bits=16, weight_granularity=granularity,
                               bias_correction="off", calib_size=64)
        q = quantize(m, opts, load_dataset(_inputs())).model
        return float(np.mean(np.square(create_session(q).run(None, {"x": x})[0] - ref)))

    assert err("auto") < 0.5 * err("tensor")
    assert err("auto") <= 1.05 * err("channel")


def test_expected_output_error_of_a_depthwise_conv():
    """The rule's err(format) of a depthwise conv: each channel's weight error relative to its
    weights (one input channel per output channel: E[x^2] cancels), summed over channels."""
    from ristretto_onnx.formats import Fixed
    m = prepare(depthwise_pointwise()).float_model
    layers = prepare(depthwise_pointwise()).layers
    x = _inputs(256, seed=2)
    ev = measure_layer_weights(m, list(layers), load_dataset(x))["dw/weights"]
    assert ev.x2.shape == (8,)
    assert np.allclose(ev.x2, np.mean(np.square(x), axis=(0, 2, 3)), rtol=1e-5)
    fmt = Fixed(4, 6)
    w = ev.weights.astype(np.float64)
    dw = np.asarray(fmt.quantize(w), np.float64) - w
    expected = float((np.square(dw).sum(axis=(1, 2, 3)) / np.square(w).sum(axis=(1, 2, 3))).sum())
    assert ev.output_error(fmt) == pytest.approx(expected, rel=1e-9)


def test_compress_auto_finds_per_channel_for_the_depthwise_conv():
    """Without a flag (deliver 6): auto is compress's default for dfp."""
    m = depthwise_pointwise()
    x = _inputs(256, seed=3)
    res = compress(m, x, metric="fidelity", tolerance=0.02, calib_size=128)
    assert isinstance(res.plan["dw/weights"], PerChannel)
    assert not isinstance(res.plan["pw/weights"], PerChannel)
    per_tensor = compress(m, x, metric="fidelity", tolerance=0.02, weight_granularity="tensor", calib_size=128)
    assert res.plan["dw/weights"].bits < per_tensor.plan["dw/weights"].bits


def test_compress_defaults_to_auto_where_a_scheme_has_per_channel_formats():
    assert [CompressOptions(scheme=s).weight_granularity for s in ("dfp", "pow2", "auto", "fixed", "minifloat")] \
        == ["auto", "auto", "auto", "tensor", "tensor"]


def test_auto_needs_a_scheme_with_per_channel_formats():
    with pytest.raises(RistrettoError, match="per-channel weights need"):
        CompressOptions(scheme="fixed", weight_granularity="auto")
    with pytest.raises(RistrettoError, match="tensor, channel or auto"):
        QuantizeOptions(scheme="dfp", bits=8, weight_granularity="layer")


def test_with_refine_auto_decides_by_the_network_output():
    m = depthwise_pointwise()
    opts = QuantizeOptions(scheme="dfp", weight_bits=6, act_bits=16, weight_granularity="auto", refine=True,
                           bias_correction="off", calib_size=64, refine_size=64)
    plan = quantize(m, opts, load_dataset(_inputs())).plan
    assert isinstance(plan["dw/weights"], PerChannel)
    assert not isinstance(plan["pw/weights"], PerChannel)
