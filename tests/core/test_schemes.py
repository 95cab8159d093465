"""The one scheme module: validation, pow2 windows, split candidates, the default range rule."""

from __future__ import annotations

import numpy as np
import pytest

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Fixed, Minifloat, PerChannel, Pow2
from ristretto_onnx.options import CompressOptions, QuantizeOptions
from ristretto_onnx.range_rules import frac_bits, minifloat_exp_bits_mse
from ristretto_onnx.schemes import (DEFAULT_RANGE_RULE, DynamicFixedPoint, MinifloatScheme, PowerOfTwo,
                                    StaticFixedPoint, check_scheme, make_scheme, plan_for, pow2_window)
from ristretto_onnx.stats import GroupRange, RangeStats


def _group(gid, role, values, kind="conv", axis=None):
    values = np.asarray(values, np.float32)
    stats = RangeStats.of(values)
    ch = ch_stats = None
    if axis is not None:
        rows = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
        ch_stats = tuple(RangeStats.of(r) for r in rows)
        ch = tuple(s.max_abs for s in ch_stats)
    return GroupRange(gid, role, kind, stats.max_abs, ch, axis, values.size, stats, ch_stats)


RNG = np.random.default_rng(0)
W = (RNG.standard_normal((4, 3, 3, 3)) * np.array([0.01, 0.1, 1.0, 3.0])[:, None, None, None]).astype(np.float32)
GROUPS = [
    _group("c/inputs", "inputs", RNG.standard_normal(2000) * 2),
    _group("c/weights", "weights", W, axis=0),
    _group("c/outputs", "outputs", RNG.standard_normal(2000) * 9),
    _group("f/weights", "weights", RNG.standard_normal((10, 16)) * 0.2, kind="fc"),
]


def test_one_default_range_rule_and_max_is_opt_in():
    assert DEFAULT_RANGE_RULE == "mse"
    assert CompressOptions().range_rule == QuantizeOptions(scheme="fixed", bits=8).range_rule == "mse"
    assert QuantizeOptions(scheme="dfp", bits=8).range_rule == "auto"  # quantize: mse or max, on calibration data
    assert DynamicFixedPoint().range_rule == make_scheme("dfp").range_rule == "mse"
    plan = plan_for(DynamicFixedPoint(), GROUPS, {"activations": 4})
    assert plan["c/outputs"] == Fixed(4, frac_bits(GROUPS[2].stats, 4, "mse", layer_output=True))
    thesis = plan_for(DynamicFixedPoint(range_rule="max"), GROUPS, {"activations": 4})
    il = int(np.ceil(np.log2(GROUPS[2].max_abs))) + 1  # eq. 5.2 (sign bit included)
    assert thesis["c/outputs"] == Fixed(4, 4 - (il - 1))  # layer outputs: one integer bit fewer


@pytest.mark.parametrize("kw, match", [
    (dict(scheme="int8"), "unknown scheme"),
    (dict(scheme="fixed", weight_granularity="channel"), "per-channel weights need --scheme dfp or pow2"),
    (dict(scheme="minifloat", weight_granularity="channel"), "minifloat has no per-channel form"),
    (dict(scheme=None, forced_format=True, weight_granularity="channel"), "--format has one format"),
    (dict(scheme="dfp", weight_granularity="filter"), "must be tensor, channel or auto"),
    (dict(scheme="pow2", range_rule="max"), "applies to --scheme dfp only"),
    (dict(scheme="dfp", range_rule="p99"), "unknown range rule"),
])
def test_check_scheme_is_the_one_validation(kw, match):
    with pytest.raises(RistrettoError, match=match):
        check_scheme(**kw)


def test_both_commands_reject_the_same_combinations():
    for kw in (dict(scheme="minifloat", weight_granularity="channel"), dict(scheme="fixed", range_rule="max")):
        with pytest.raises(RistrettoError) as a:
            CompressOptions(**kw)
        with pytest.raises(RistrettoError) as b:
            QuantizeOptions(bits=8, **kw)
        assert str(a.value) == str(b.value)
    check_scheme("auto", weight_granularity="channel", range_rule="max")  # compress: auto is fine


def test_pow2_windows_one_rule_for_fixed_windows_widths_and_channels():
    assert pow2_window(0.3, 7) == Pow2(-9, -2)  # round(log2 0.3) = -2
    assert pow2_window(0.0, 7) == Pow2(-7, 0) and pow2_window(0.0, 7, Pow2(-8, -1)) == Pow2(-8, -1)
    assert pow2_window(2.0**-130, 7).exp_min >= -125  # the window keeps its width at float32's end
    w = GROUPS[1]
    assert PowerOfTwo().formats([w], 4)["c/weights"] == pow2_window(w.max_abs, 7)
    assert PowerOfTwo(window=Pow2(-8, -1)).formats([w], 4)["c/weights"] == Pow2(-8, -1)  # the thesis's
    per_channel = PowerOfTwo(window=Pow2(-8, -1), per_channel=True).formats([w], 4)["c/weights"]
    assert per_channel == PerChannel(tuple(pow2_window(m, 7, Pow2(-8, -1)) for m in w.channel_max_abs), 0)
    assert len({f.exp_max for f in per_channel.formats}) == 4  # one window per channel, same width
    assert make_scheme("pow2", exp_min=-6, exp_max=0).window == Pow2(-6, 0)
    with pytest.raises(RistrettoError, match="both --exp-min and --exp-max"):
        make_scheme("pow2", exp_min=-6)


def test_fixed_split_candidates_from_no_saturation_down_to_the_typical_group():
    acts = [g for g in GROUPS if g.category == "activations"]
    frac = StaticFixedPoint().variants(acts, 8)
    # The first candidate saturates no group (the largest output's IL, eq. 5.2), then the
    # layer-output rule's one bit fewer; most integer bits first.
    il = int(np.ceil(np.log2(GROUPS[2].max_abs))) + 1
    assert frac == sorted(frac) and frac[:2] == [8 - il, 8 - il + 1] and len(frac) <= 4
    plan = plan_for(StaticFixedPoint(), GROUPS, {"activations": 8}, {"activations": frac[1]})
    assert plan["c/inputs"] == plan["c/outputs"] == Fixed(8, frac[1]) and plan["c/weights"] is None


def test_minifloat_splits_come_from_the_histograms_not_eq_6_2_alone():
    weights = [g for g in GROUPS if g.role == "weights"]
    best = minifloat_exp_bits_mse([g.stats for g in weights], 8)
    assert MinifloatScheme().variants(weights, 8) == [best, best + 1]
    assert MinifloatScheme(exp_bits=3).variants(weights, 8) == [3]
    no_histograms = [GroupRange(g.group, g.role, g.kind, g.max_abs) for g in weights]
    assert MinifloatScheme().variants(no_histograms, 8) == [MinifloatScheme().rule_exp_bits(no_histograms, 8)]
    formats = MinifloatScheme().formats(weights, 8, best)
    assert set(formats.values()) == {Minifloat(8, best)}


def test_dfp_per_channel_uses_the_rule_on_each_channel():
    w = GROUPS[1]
    fmt = DynamicFixedPoint(per_channel=True).formats([w], 6)["c/weights"]
    assert fmt == PerChannel(tuple(Fixed(6, frac_bits(s, 6, "mse")) for s in w.channel_stats), 0)
    bare = GroupRange("g", "weights", "conv", 1.0, (1.0, 0.25), 0)  # no histograms: eq. 5.2, IL 1 and -1
    assert DynamicFixedPoint(per_channel=True).formats([bare], 6)["g"] == PerChannel((Fixed(6, 5), Fixed(6, 7)), 0)
