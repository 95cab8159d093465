"""concat_ties: layer outputs that fill one Concat buffer share one format."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from ristretto_onnx.compress import CompressOptions, build_context
from ristretto_onnx.data import load_dataset
from ristretto_onnx.range_rules import dfp_format
from ristretto_onnx.passes.analysis.concat_ties import concat_ties
from ristretto_onnx.passes.pipeline import prepare
from ristretto_onnx.quantize import QuantizeOptions, quantize
from ristretto_onnx.ranges import tie_ranges
from ristretto_onnx.stats import RangeStats

from tests import builders as synth

FIRE = ("expand1x1/outputs", "expand3x3/outputs")


def fire_with_relus(scale3: float = 8.0):
    """The fire module with ReLUs after the expands, the 3x3 branch's weights ``scale3`` larger."""
    m = synth.inception()
    for t in m.graph.initializer:
        if t.name == "we3":
            w = np.frombuffer(t.raw_data, np.float32) if t.raw_data else np.array(t.float_data, np.float32)
            t.ClearField("float_data")
            t.raw_data = (w * scale3).astype(np.float32).tobytes()
    nodes = list(m.graph.node)
    cat = next(n for n in nodes if n.op_type == "Concat")
    cat.input[:] = ["e1r", "e3r"]
    relus = [helper.make_node("Relu", ["e1"], ["e1r"], name="e1_relu"),
             helper.make_node("Relu", ["e3"], ["e3r"], name="e3_relu")]
    del m.graph.node[:]
    m.graph.node.extend(nodes[:4] + relus + nodes[4:])
    return m


def test_fire_module_expands_are_tied_directly_and_through_relu():
    for m in (synth.inception(), fire_with_relus()):
        p = prepare(m)
        ties = concat_ties(p.float_model, p.layers)
        assert ties == {g: FIRE for g in FIRE}


def test_a_single_layer_concat_and_an_unrelated_graph_have_no_ties():
    p = prepare(synth.conv_relu_conv())
    assert concat_ties(p.float_model, p.layers) == {}
    m = synth.inception()
    cat = next(n for n in m.graph.node if n.op_type == "Concat")
    cat.input[:] = ["e1", "x"]  # one layer output and the graph input
    p = prepare(m)
    assert concat_ties(p.float_model, p.layers) == {}


def test_nested_concats_merge_into_one_tie():
    m = synth.inception()
    nodes = list(m.graph.node)
    cat = next(n for n in nodes if n.op_type == "Concat")
    cat.input[:] = ["e1", "e3"]
    cat.output[0] = "cat0"
    outer = helper.make_node("Concat", ["cat0", "sr"], ["cat"], name="outer", axis=1)
    del m.graph.node[:]
    m.graph.node.extend(nodes[:-1] + [outer, nodes[-1]])
    for t in m.graph.initializer:  # the last conv now reads 8 + 2 channels
        if t.name == "wo":
            t.CopyFrom(synth.init("wo", synth.weights((2, 10, 1, 1), 4)))
    p = prepare(m)
    ties = concat_ties(p.float_model, p.layers)
    assert ties["squeeze/outputs"] == ("squeeze/outputs",) + FIRE  # the squeeze reaches it via Relu


def test_tie_ranges_gives_every_member_the_widest_range():
    ranges = {"a/outputs": RangeStats.of([1.0]), "b/outputs": RangeStats.of([5.0]), "c/outputs": RangeStats.of([2.0])}
    tied = tie_ranges(ranges, {"a/outputs": ("a/outputs", "b/outputs"), "b/outputs": ("a/outputs", "b/outputs")})
    assert tied["a/outputs"].max_abs == tied["b/outputs"].max_abs == 5.0 and tied["c/outputs"].max_abs == 2.0


@pytest.mark.parametrize("rule", ["max", "mse", "percentile:99.99"])
def test_quantize_and_compress_give_tied_outputs_one_format_of_the_widest_range(rule):
    m = fire_with_relus()
    x = synth.sample_input(m, batch=64)
    data = load_dataset(x)
    r = quantize(m, QuantizeOptions(scheme="dfp", bits=8, range_rule=rule), data)
    assert r.plan[FIRE[0]] == r.plan[FIRE[1]]
    widest = max(r.ranges[g].max_abs for g in FIRE)
    assert r.ranges[FIRE[0]].max_abs != r.ranges[FIRE[1]].max_abs  # they really differ
    if rule == "max":
        assert r.plan[FIRE[0]] == dfp_format(widest, 8, layer_output=True)
    ctx = build_context(m, x, options=CompressOptions(metric="fidelity"))
    by_group = {g.group: g for g in ctx.ranges}
    assert by_group[FIRE[0]].max_abs == by_group[FIRE[1]].max_abs == pytest.approx(widest)
    assert by_group[FIRE[0]].size == by_group[FIRE[1]].size  # sizes stay each group's own
