"""Per-output-channel weight formats on a synthetic MobileNet-style network (see tests.builders.mobilenet_like).

Fidelity is agreement of the top-1 class with the FP32 network (BN folded) on random inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ristretto_onnx.compress import CompressOptions, build_context, compress
from ristretto_onnx.data import load_dataset
from ristretto_onnx.formats import Fixed, PerChannel, quantize as q_ref
from ristretto_onnx.passes.analysis.clip_bounds import clip_bounds
from ristretto_onnx.passes.graph import constant_lookup
from ristretto_onnx.passes.pipeline import prepare, simulate
from ristretto_onnx.passes.slots import read_slots
from ristretto_onnx.schemes import DynamicFixedPoint, plan_for
from ristretto_onnx.stats import CATEGORIES
from ristretto_onnx.quantize import QuantizeOptions, quantize
from ristretto_onnx.runtime.session import create_session

from tests.builders import mobilenet_like, random_inputs


@pytest.fixture(scope="module")
def net():
    m = mobilenet_like()
    x = random_inputs(2000)
    ctx = build_context(m, x, options=CompressOptions(metric="fidelity", calib_size=500))
    return m, x, ctx


def fidelity(ctx, per_channel: bool, bits: int = 8, rule: str = "max") -> float:
    plan = plan_for(DynamicFixedPoint(per_channel=per_channel, range_rule=rule), ctx.ranges,
                    {c: bits for c in CATEGORIES})
    return ctx.scorer.score(plan).value


def test_folded_depthwise_weights_span_2_to_the_8_across_output_channels(net):
    _, _, ctx = net
    spans = {r.group: max(r.channel_max_abs) / min(m for m in r.channel_max_abs if m > 0)
             for r in ctx.ranges if r.role == "weights"}
    assert spans["b1.dw/weights"] > 2**8 and spans["b2.dw/weights"] > 2**8
    assert max(spans["b0.pw/weights"], spans["fc/weights"]) < 2**3


def test_per_tensor_dfp8_fails_and_per_channel_dfp8_keeps_fp32_fidelity(net):
    _, _, ctx = net
    assert ctx.scorer.baseline == 1.0
    assert fidelity(ctx, per_channel=False) < 0.5
    assert fidelity(ctx, per_channel=True) >= 1.0 - 0.005


@pytest.mark.parametrize("rule", ["percentile:99.99", "mse"])
def test_per_channel_holds_with_the_other_range_rules(net, rule):
    _, _, ctx = net
    assert fidelity(ctx, per_channel=True, rule=rule) >= 1.0 - 0.005


def test_relu6_outputs_are_measured_after_the_clip_and_keep_their_integer_bit(net):
    m, _, ctx = net
    bounds = clip_bounds(prepare(m).float_model, prepare(m).layers)
    assert len(bounds) == 7 and {(b.lo, b.hi) for b in bounds.values()} == {(0.0, 6.0)}
    outputs = {r.group: r for r in ctx.ranges if r.role == "outputs"}
    assert all(outputs[g].bounded and outputs[g].max_abs <= 6.0 for g in bounds)
    assert not outputs["fc/outputs"].bounded
    plan = DynamicFixedPoint(range_rule="max").formats(list(outputs.values()), 8)
    # 6 needs 3 integer bits plus the sign: fixed:8:4 reaches 7.94; fixed:8:5 (the thesis's
    # layer-output rule) would saturate every value in (4, 6], making ReLU6 a ReLU4.
    assert all(plan[g] == Fixed(8, 4) for g in bounds)


def test_quantize_per_channel_writes_per_channel_weights_that_keep_fidelity(net):
    m, x, ctx = net
    data = load_dataset(x[:500])
    ref = ctx.run_float(x)
    agree = {}
    for granularity in ("tensor", "channel"):
        r = quantize(m, QuantizeOptions(scheme="dfp", bits=8, weight_granularity=granularity), data)
        weights = [f for g, f in r.plan.items() if g.endswith("/weights")]
        assert all(isinstance(f, PerChannel) == (granularity == "channel") for f in weights)
        out = create_session(r.model).run(None, {"x": x})[0]
        agree[granularity] = float(np.mean(out.argmax(1) == ref.argmax(1)))
    assert agree["tensor"] < 0.5 and agree["channel"] >= 0.995


def test_compress_per_channel_finds_8_bits_or_fewer(net):
    m, x, _ = net
    r = compress(m, x, metric="fidelity", scheme="dfp", tolerance=0.005, weight_granularity="channel",
                 calib_size=500)
    assert r.report.drop <= 0.005 + 1e-12
    assert r.report.categories["conv_weights"]["bits"] <= 8
    assert isinstance(r.plan["b1.dw/weights"], PerChannel)


def _grouped_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Reference depthwise/grouped conv in float64 (NCHW, square kernel)."""
    n, c, h, wd = x.shape
    co, ci, k, _ = w.shape
    groups = c // ci
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, co, ho, wo))
    per = co // groups
    for o in range(co):
        g = o // per
        for i in range(k):
            for j in range(k):
                patch = xp[:, g * ci:(g + 1) * ci, i:i + stride * ho:stride, j:j + stride * wo:stride]
                out[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, i, j].astype(np.float64))
    return out + b.reshape(1, -1, 1, 1)


def test_simulated_depthwise_conv_with_per_channel_weights_is_numpy_conv_of_quantized_weights(net):
    m, x, ctx = net
    prepared = prepare(m)
    layer = prepared.layers["b1.dw"]
    gr = next(r for r in ctx.ranges if r.group == "b1.dw/weights")
    fmt = DynamicFixedPoint(per_channel=True, range_rule="max").formats([gr], 6)["b1.dw/weights"]
    assert len({f.frac_bits for f in fmt.formats}) > 3  # channels really differ
    model = simulate(prepared, {"b1.dw/weights": fmt})
    slot = next(s for s in read_slots(model) if s.group == "b1.dw/weights")
    extra = [slot.output, layer.input, layer.output]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in extra)
    wq, xin, yout = create_session(probe).run(extra, {"x": x[:8]})
    constant = constant_lookup(prepared.float_model)
    w = constant(layer.weight)
    bias = constant(layer.bias)
    ref_w = q_ref(w, fmt)
    assert np.array_equal(wq.view(np.uint32), ref_w.view(np.uint32))  # bit-exact weights
    ref = _grouped_conv(xin, ref_w, bias, stride=2, pad=1)
    np.testing.assert_allclose(yout, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
