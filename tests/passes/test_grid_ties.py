"""passes.grid_ties: inputs that read a layer output unchanged take its format (one rounding)."""

from __future__ import annotations

import numpy as np

from ristretto_onnx.data import load_dataset
from ristretto_onnx.passes.grid_ties import grid_sources
from ristretto_onnx.passes.pipeline import prepare, simulate
from ristretto_onnx.quantize import QuantizeOptions, quantize
from ristretto_onnx.runtime.session import create_session

from tests import builders as synth


def test_sources_through_pooling_flatten_relu_and_concat():
    p = prepare(synth.flatten_gemm())
    assert grid_sources(p.float_model, p.layers) == {"fc1/inputs": "conv/outputs", "fc2/inputs": "fc1/outputs"}
    p = prepare(synth.inception())
    assert grid_sources(p.float_model, p.layers)["out/inputs"] == "expand1x1/outputs"  # via Concat
    p = prepare(synth.residual_block())  # an Add between: not the same grid
    assert all(not g.startswith("block/conv1") for g in grid_sources(p.float_model, p.layers))


def test_the_second_quantizer_becomes_an_exact_no_op():
    for build in (synth.flatten_gemm, synth.inception, synth.conv_relu_conv):
        m = build()
        x = synth.sample_input(m, batch=32, seed=3, scale=2.0)
        r = quantize(m, QuantizeOptions(scheme="dfp", bits=5, calib_size=32, bias_correction="off", range_rule="max",
                                        weight_rounding="nearest"), load_dataset(x))
        p = prepare(m)
        tied = grid_sources(p.float_model, p.layers)
        assert tied and all(r.plan[i] == r.plan[o] for i, o in tied.items())
        without = simulate(p, {g: (None if g in tied else f) for g, f in r.plan.items()})
        run = lambda model: create_session(model).run(None, {"x": x})[0]  # noqa: E731
        assert np.array_equal(run(r.model), run(without))
        off = quantize(m, QuantizeOptions(scheme="dfp", bits=5, calib_size=32, bias_correction="off", round_once=False,
                                           range_rule="max"),
                       load_dataset(x))
        assert any(off.plan[i] != off.plan[o] for i, o in tied.items())  # the thesis's rule rounds twice
