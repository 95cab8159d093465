"""The range stage: every group's range for compress, quantize and analyze."""

from __future__ import annotations

import numpy as np

from ristretto_onnx.data import load_dataset
from ristretto_onnx.passes.pipeline import prepare
from ristretto_onnx.ranges import group_ranges, measure_groups
from tests import builders as synth


def _fire():
    """The synthetic fire module: two expand convs whose outputs fill one Concat buffer."""
    m = synth.inception()
    return m, load_dataset(synth.sample_input(m, batch=16))


def test_one_group_range_per_group_with_sizes_and_channels():
    m = synth.conv_relu_conv()
    data = load_dataset(synth.sample_input(m, batch=8))
    p = prepare(m)
    ranges = measure_groups(p.float_model, p.layers, data)
    assert [r.group for r in ranges] == list(p.layers.group_ids)
    raw = group_ranges(p.float_model, p.layers, data)
    for r in ranges:
        assert r.max_abs == raw[r.group].max_abs and r.stats.count == raw[r.group].count
        if r.role == "weights":
            layer = p.layers[r.group.split("/")[0]]
            assert r.size == int(np.prod(layer.weight_shape)) and len(r.channel_max_abs) == layer.weight_shape[0]
            assert max(r.channel_max_abs) == r.max_abs
        elif r.role in ("inputs", "outputs"):
            assert r.size == raw[r.group].count // 8  # values per image


def test_parameters_only_without_data():
    m = synth.conv_relu_conv()
    p = prepare(m)
    assert {r.role for r in measure_groups(p.float_model, p.layers)} == {"weights", "bias"}


def test_concat_ties_share_the_widest_range_for_formats_but_not_in_the_analysis():
    m, data = _fire()
    p = prepare(m)
    tied = {r.group: r for r in measure_groups(p.float_model, p.layers, data)}
    raw = {r.group: r for r in measure_groups(p.float_model, p.layers, data, for_formats=False)}
    expands = [g for g in tied if g.endswith("/outputs") and tied[g].measured is not tied[g].stats]
    assert len(expands) == 1  # the narrower expand takes the wider one's range
    g = expands[0]
    assert tied[g].max_abs > raw[g].max_abs == tied[g].measured.max_abs
    assert all(raw[k].stats is raw[k].measured for k in raw)
