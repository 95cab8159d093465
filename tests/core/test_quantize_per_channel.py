"""quantize(): per-output-channel weights (dfp, pow2) and range rules, API and CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from ristretto_onnx.cli import main
from ristretto_onnx.data import load_dataset
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Fixed, PerChannel, Pow2
from ristretto_onnx.range_rules import dfp_format
from ristretto_onnx.passes.pipeline import prepare
from ristretto_onnx.quantize import QuantizeOptions, quantize
from ristretto_onnx.range_rules import frac_bits
from ristretto_onnx.ranges import channel_ranges
from tests import builders as synth


@pytest.fixture(scope="module")
def dw():
    m = synth.depthwise_grouped()
    return m, load_dataset(synth.sample_input(m, batch=32))


def test_dfp_per_channel_is_eq_5_2_on_each_output_channel(dw):
    m, data = dw
    r = quantize(m, QuantizeOptions(scheme="dfp", bits=8, weight_granularity="channel"), data)
    p = prepare(m)
    for gid, (axis, stats) in channel_ranges(p.float_model, p.layers).items():
        assert r.plan[gid] == PerChannel(tuple(dfp_format(s.max_abs, 8) for s in stats), axis)
    assert all(isinstance(f, Fixed) for g, f in r.plan.items() if not g.endswith(("weights", "bias")))
    assert r.sidecar()["options"]["weight_granularity"] == "channel"


def test_dfp_range_rule_applies_to_activations_and_each_channel(dw):
    m, data = dw
    r = quantize(m, QuantizeOptions(scheme="dfp", bits=4, weight_granularity="channel", range_rule="mse"), data)
    p = prepare(m)
    axis, stats = channel_ranges(p.float_model, p.layers)["depthwise/weights"]
    assert r.plan["depthwise/weights"] == PerChannel(tuple(Fixed(4, frac_bits(s, 4, "mse")) for s in stats), axis)
    assert r.plan["depthwise/inputs"] == Fixed(4, frac_bits(r.ranges["depthwise/inputs"], 4, "mse"))


def test_pow2_per_channel_windows_keep_the_width_and_follow_each_channel(dw):
    m, _ = dw
    r = quantize(m, QuantizeOptions(scheme="pow2", pow2=Pow2(-8, -1), weight_granularity="channel"))
    p = prepare(m)
    axis, stats = channel_ranges(p.float_model, p.layers)["depthwise/weights"]
    fmt = r.plan["depthwise/weights"]
    assert isinstance(fmt, PerChannel) and fmt.axis == axis
    for f, s in zip(fmt.formats, stats):
        assert f.exp_max - f.exp_min == 7 and f.exp_max == round(np.log2(s.max_abs))


@pytest.mark.parametrize("kw, match", [
    (dict(scheme="minifloat", bits=8, weight_granularity="channel"), "minifloat has no per-channel form"),
    (dict(scheme="fixed", bits=8, weight_granularity="channel"), "per-channel weights need --scheme dfp or pow2"),
    (dict(format="fixed:8:4", weight_granularity="channel"), "per-channel weights need"),
    (dict(scheme="dfp", bits=8, weight_granularity="filter"), "must be tensor, channel or auto"),
    (dict(scheme="minifloat", bits=8, range_rule="max"), "applies to --scheme dfp only"),
    (dict(scheme="auto", bits=8), "compress tries them all"),
    (dict(scheme="dfp", bits=8, range_rule="p99"), "unknown range rule"),
])
def test_bad_combinations_are_one_line_errors(kw, match):
    with pytest.raises(RistrettoError, match=match):
        QuantizeOptions(**kw)


def test_cli_weight_granularity_and_range_rule(tmp_path, dw):
    m, data = dw
    onnx.save(m, tmp_path / "in.onnx")
    np.save(tmp_path / "calib.npy", synth.sample_input(m, batch=32))
    out = tmp_path / "out.onnx"
    assert main(["quantize", str(tmp_path / "in.onnx"), str(out), "--scheme", "dfp", "--bits", "8",
                 "--calib", str(tmp_path / "calib.npy"), "--weight-granularity", "channel",
                 "--range-rule", "percentile:99.99"]) in (0, None)
    side = json.loads(out.with_suffix(".json").read_text())
    assert "@" in side["formats"]["depthwise/weights"] and side["options"]["range_rule"] == "percentile:99.99"
    assert main(["quantize", str(tmp_path / "in.onnx"), str(tmp_path / "o2.onnx"), "--scheme", "minifloat",
                 "--bits", "8", "--calib", str(tmp_path / "calib.npy"), "--weight-granularity", "channel"]) == 2  # usage error


def test_the_output_rule_and_the_weights_bias_correction_share_one_moments_pass(dw, monkeypatch):
    """Per-channel weights with the ``output`` rule and the weights' bias correction read the same
    FP32 input moments on the same calibration images: one pass over them, the same model as
    with a pass each (the correction's means are the moments' first half)."""
    from ristretto_onnx import moments, quantize as q

    m, data = dw
    opts = QuantizeOptions(scheme="dfp", bits=4, weight_granularity="channel", bias_correction="weights",
                           weight_rounding="nearest")  # one rounding candidate: one means pass each
    passes = []
    real = moments.channel_stats
    monkeypatch.setattr(moments, "channel_stats", lambda *a, **k: passes.append(k) or real(*a, **k))
    shared = quantize(m, opts, data)
    assert len(passes) == 1 and shared.bias_correction == "applied"
    monkeypatch.setattr(q, "_input_moments", lambda *a: None)  # each measures its own
    apart = quantize(m, opts, data)
    assert len(passes) == 3
    assert apart.plan == shared.plan
    assert apart.model.SerializeToString() == shared.model.SerializeToString()
