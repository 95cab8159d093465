"""Fractional lengths moved by the network's output error (ristretto_onnx.refine)."""

from __future__ import annotations

import numpy as np

from ristretto_onnx.data import load_dataset
from ristretto_onnx.formats import Fixed, UFixed
from ristretto_onnx.quantize import QuantizeOptions, quantize
from ristretto_onnx.refine import moved, output_error, refine_plan
from ristretto_onnx.runtime.session import create_session

from tests.builders import conv_relu_conv


def test_moved_keeps_the_kind_and_width():
    assert moved(Fixed(8, 3), 1) == Fixed(8, 4)
    assert moved(UFixed(4, 2), -2) == UFixed(4, 0)


def test_coordinate_descent_follows_the_error_down_and_stops_at_max_steps():
    x = [np.linspace(0.0, 3.0, 301)]
    run = lambda plan, v: plan["a"].quantize(v)  # noqa: E731 - the "network" is one quantizer
    plan, rec = refine_plan({"a": Fixed(8, 0), "b": None}, ["a", "b"], run, x, x, objective="mse")
    assert plan["a"] == Fixed(8, 3) and rec["moves"] == {"a": 3}  # MAX_STEPS finer steps, each better
    plan, rec = refine_plan(plan, ["a"], run, x, x, objective="mse")
    assert plan["a"] == Fixed(8, 5)  # 2^(7-5) = 4 > 3: finer would clip
    assert rec["error_after"] < rec["error_before"]
    plan2, rec2 = refine_plan(plan, ["a"], run, x, x, objective="mse")
    assert plan2 == plan and rec2["moves"] == {}


def test_tied_groups_move_with_their_source_only():
    x = [np.linspace(-1.0, 1.0, 101)]
    run = lambda plan, v: plan["in"].quantize(plan["out"].quantize(v))  # noqa: E731
    tie = lambda p: {**p, "in": p["out"]}  # noqa: E731 - "in" reads "out" unchanged (round once)
    plan, rec = refine_plan({"out": Fixed(8, 2), "in": Fixed(8, 2)}, ["out", "in"], run, x, x, tie=tie,
                            objective="mse")
    assert plan["in"] == plan["out"] == Fixed(8, 5) and set(rec["moves"]) == {"out"}


def test_quantize_refine_lowers_the_output_divergence_on_the_calibration_images():
    m = conv_relu_conv()
    x = np.random.default_rng(0).standard_normal((96, 3, 8, 8)).astype(np.float32)
    ref = create_session(m).run(None, {"x": x})[0].reshape(96, -1)
    errs = {}
    for refine in (False, True):
        opts = QuantizeOptions(scheme="dfp", bits=4, refine=refine, bias_correction="off", calib_size=96,
                               refine_size=96)
        res = quantize(m, opts, load_dataset(x))
        out = create_session(res.model).run(None, {"x": x})[0].reshape(96, -1)
        errs[refine] = output_error(lambda p, v: v, {}, [out], [ref])
        if refine:
            assert res.plan["conv2/inputs"] == res.plan["conv1/outputs"]  # still rounded once
    assert errs[True] < errs[False]
