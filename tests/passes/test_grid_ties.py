"""passes.grid_ties: inputs that read a layer output unchanged take its format (one rounding)."""

from __future__ import annotations

import numpy as np

from ristretto_onnx.data import load_dataset
from ristretto_onnx.passes.grid_ties import carried_input, grid_sources
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


def test_values_are_carried_only_through_data_outputs():
    """MaxPool's indices and Dropout's mask are not the input's values; a Dropout told to train
    may zero some (0 is on every grid, but the next layer reads a scaled survivor)."""
    import onnx_graphsurgeon as gs

    x = gs.Variable("x", np.float32, (1, 1, 4, 4))
    y, idx, d, mask, t = (gs.Variable(n) for n in ("y", "idx", "d", "mask", "t"))
    gs.Node("MaxPool", inputs=[x], outputs=[y, idx], attrs={"kernel_shape": [2, 2]})
    gs.Node("Dropout", inputs=[y], outputs=[d, mask])
    gs.Node("Dropout", inputs=[y, gs.Constant("r", np.array(0.5, np.float32)),
                               gs.Constant("on", np.array(True))], outputs=[t])
    assert carried_input(y) is x and carried_input(d) is y
    assert carried_input(idx) is None and carried_input(mask) is None and carried_input(t) is None
    assert carried_input(x) is None  # a graph input has no producer


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
