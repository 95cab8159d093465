"""The lowering's exact rewrites: what they produce, and that the numbers do not change."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ristretto_onnx.formats import quantize
from ristretto_onnx.runtime.lowering import PARAM_PREFIX, lower
from ristretto_onnx.runtime.session import create_session
from ristretto_onnx.runtime.simulator import Simulator
from tests.builders import annotate, images, residual_cnn


def ops(model) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def run(model, x, feeds=None):
    return create_session(model).run(None, {"input": x, **(feeds or {})})[0]


def test_weights_are_baked_with_the_numpy_reference():
    model = annotate(residual_cnn(), weight_fmt="fixed:6:5")
    lowered = lower(model)
    inits = {i.name: i for i in lowered.model.graph.initializer}
    from onnx import numpy_helper

    w = numpy_helper.to_array({i.name: i for i in model.graph.initializer}["w2"])
    baked = numpy_helper.to_array(inits["conv2_w_q"])
    assert np.array_equal(baked.view(np.uint32), quantize(w, "fixed:6:5").view(np.uint32))
    assert not any(n.domain == "ai.ristretto" for n in lowered.model.graph.node)


def test_parametric_graph_takes_formats_as_inputs():
    model = annotate(residual_cnn())
    lowered = lower(model, parametric=True)
    params = [i.name for i in lowered.model.graph.input if i.name.startswith(PARAM_PREFIX)]
    assert sorted(params) == sorted(lowered.feeds)
    assert lowered.feeds  # scales/bounds of the activation quantizers
    x = images(16)
    assert np.array_equal(run(lowered.model, x, lowered.feeds).view(np.uint32),
                          run(model, x).view(np.uint32))


def test_same_structure_same_key_whatever_the_fixed_activation_formats():
    a = Simulator(annotate(residual_cnn(), fmt="fixed:8:4"))
    b = Simulator(annotate(residual_cnn(), fmt="fixed:8:2"))
    assert a.lowered().key == b.lowered().key
    assert a.lowered().feeds.keys() == b.lowered().feeds.keys()
    c = Simulator(annotate(residual_cnn(), fmt="fixed:8:4", weight_fmt="fixed:8:5"))
    assert c.lowered().key != a.lowered().key


def test_round_is_kept_only_where_a_zero_sign_could_reach_the_output():
    lowered = lower(annotate(residual_cnn()), parametric=False)
    counts = ops(lowered.model)
    # 8 activation quantizers in 8-bit: all but fc/outputs (a graph output) use QuantizeLinear.
    assert counts["QuantizeLinear"] == 7
    assert counts["Round"] == 1
    # ReLUs in front of a quantizer became integer clips.
    assert counts["Relu"] < 3


@pytest.mark.parametrize("fmt", ["fixed:12:6", "fixed:16:8"])
def test_wide_formats_use_the_exact_round_chain(fmt):
    model = annotate(residual_cnn(), fmt=fmt)
    lowered = lower(model, parametric=False)
    assert ops(lowered.model)["QuantizeLinear"] == 0
    x = images(32)
    assert np.array_equal(run(lowered.model, x, lowered.feeds).view(np.uint32), run(model, x).view(np.uint32))


def test_double_rounding_is_dropped_only_when_exact():
    # conv2 output 16:4 -> ReLU -> conv3 input 16:6 (finer): the second Round is redundant; with
    # 16:2 (coarser) it is not.
    finer = Simulator(annotate(residual_cnn(), fmt="fixed:16:4"), parametric=False)
    finer.set_formats({"conv3/inputs": "fixed:16:6"})
    coarser = Simulator(annotate(residual_cnn(), fmt="fixed:16:4"), parametric=False)
    coarser.set_formats({"conv3/inputs": "fixed:16:2"})
    assert ops(finer.lowered().model)["Round"] < ops(coarser.lowered().model)["Round"]
    x = images(32)
    for sim in (finer, coarser):
        assert np.array_equal(sim.run(x).view(np.uint32), run(sim.model(), x).view(np.uint32))


def test_lowering_never_modifies_the_model_it_reads():
    """graphsurgeon renames the source's own TensorProtos on export; a Constant node turned
    initializer once left its output's name in the annotated model (found by byte comparison)."""
    from ristretto_onnx.passes.pipeline import prepare
    from tests import builders

    model = builders.option_a_shortcut()
    model.graph.node[2].attribute[0].t.ClearField("name")  # as the PyTorch exporter writes it
    prepared = prepare(model)
    before = prepared.annotated.SerializeToString()
    sim = Simulator(prepared.annotated)
    sim.set_formats({g.id: "fixed:8:4" for layer in prepared.layers for g in layer.groups})
    sim.lowered()
    lower(prepared.annotated, parametric=False)
    assert prepared.annotated.SerializeToString() == before
