"""set_formats: the simulated data path, bit-exact against the numpy reference quantizers."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Fixed, PerChannel, parse_format, quantize
from ristretto_onnx.passes.transforms.insert_quantizers import insert_quantizers
from ristretto_onnx.passes.load import load_model
from ristretto_onnx.passes.transforms.set_formats import set_formats
from ristretto_onnx.passes.slots import read_plan, read_skipped_relus, read_slots
from ristretto_onnx.runtime.session import create_session
from tests import builders as synth


def _annotated(pattern: str, **kw):
    return insert_quantizers(load_model(getattr(synth, pattern)(**kw)))


def _run(m, x):
    return create_session(m).run(None, {"x": x})[0]


def _init(m, name):
    return numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == name))


def _qsims(m):
    return [n for n in m.graph.node if n.op_type == "QuantizeSim"]


def _node_op(node, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Run one float node in onnxruntime (the same kernels the simulated model uses)."""
    vis = [helper.make_tensor_value_info(k, 1, list(v.shape)) for k, v in inputs.items()]
    g = helper.make_graph([node], "one", vis, [helper.make_tensor_value_info(node.output[0], 1, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return create_session(m).run(None, inputs)[0]


def _conv(x, w, b=None, **attrs):
    names = ["x", "w"] + (["b"] if b is not None else [])
    node = helper.make_node("Conv", names, ["out"], **attrs)
    feeds = {"x": x, "w": w} | ({"b": b} if b is not None else {})
    return _node_op(node, feeds)


def _numpy_conv(x, w, pad):
    """float64 direct convolution (stride 1) for an independent check."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    out = np.zeros((n, o, h - kh + 1, wd - kw + 1))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", x[:, :, i:i + out.shape[2], j:j + out.shape[3]], w[:, :, i, j])
    return out


PLAN = {
    "conv1/inputs": "fixed:8:4", "conv1/weights": "fixed:8:6", "conv1/outputs": "fixed:8:3",
    "conv2/inputs": "fixed:8:5", "conv2/weights": "minifloat:8:4", "conv2/bias": "pow2:-8:-1",
    "conv2/outputs": "fixed:16:10",
}


def test_conv_data_path_is_bit_exact_against_the_numpy_quantizers():
    m = load_model(synth.conv_relu_conv())
    annotated = insert_quantizers(m)
    sim = set_formats(annotated, PLAN)
    onnx.checker.check_model(sim)
    x = synth.sample_input(m, batch=3, scale=2.0)
    f = {k: parse_format(v) for k, v in PLAN.items()}
    w1, b1, w2, b2 = (_init(m, n) for n in ("w1", "b1", "w2", "b2"))
    c1 = _conv(quantize(x, f["conv1/inputs"]), quantize(w1, f["conv1/weights"]), b1, pads=[1, 1, 1, 1])
    r1 = np.maximum(quantize(c1, f["conv1/outputs"]), 0)  # the Relu sees the quantized output
    c2 = _conv(quantize(r1, f["conv2/inputs"]), quantize(w2, f["conv2/weights"]), quantize(b2, f["conv2/bias"]))
    expected = quantize(c2, f["conv2/outputs"])
    got = _run(sim, x)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    # and the MAC itself agrees with an independent float64 convolution of the quantized values
    ref = _numpy_conv(quantize(x, f["conv1/inputs"]), quantize(w1, f["conv1/weights"]).astype(np.float64), 1)
    ref += b1[None, :, None, None]
    np.testing.assert_allclose(c1, ref, rtol=0, atol=1e-5)


def test_gemm_and_matmul_add_are_bit_exact():
    m = load_model(synth.matmul_add())
    plan = {"fc1/inputs": "fixed:8:5", "fc1/weights": "fixed:6:6", "fc1/bias": "fixed:8:7",
            "fc1/outputs": "fixed:8:4", "fc2/weights": "pow2:-8:-1"}
    sim = set_formats(insert_quantizers(m), plan)
    x = synth.sample_input(m, batch=5)
    q = {k: parse_format(v) for k, v in plan.items()}
    mm = _node_op(helper.make_node("MatMul", ["a", "b"], ["out"]),
                  {"a": quantize(x, q["fc1/inputs"]), "b": quantize(_init(m, "w1"), q["fc1/weights"])})
    a1 = quantize(mm + quantize(_init(m, "b1"), q["fc1/bias"]), q["fc1/outputs"])
    r = np.maximum(a1, 0)
    m2 = _node_op(helper.make_node("MatMul", ["a", "b"], ["out"]),
                  {"a": r, "b": quantize(_init(m, "w2"), q["fc2/weights"])})
    expected = m2 + _init(m, "b2")
    np.testing.assert_array_equal(_run(sim, x), expected)


def test_float_groups_are_identities_and_omitted_groups_are_float():
    annotated = _annotated("conv_relu_conv")
    sim = set_formats(annotated, {"conv1/weights": "fixed:8:6", "conv2/outputs": None})
    assert [n.name for n in _qsims(sim)] == ["qslot:conv1/weights"]
    x = synth.sample_input(sim)
    plain = set_formats(annotated, {})
    assert not _qsims(plain)
    np.testing.assert_array_equal(_run(plain, x), _run(load_model(synth.conv_relu_conv()), x))


def test_shared_input_is_quantized_once_when_formats_agree():
    annotated = _annotated("inception")
    same = set_formats(annotated, {"expand1x1/inputs": "fixed:8:4", "expand3x3/inputs": "fixed:8:4"})
    assert len(_qsims(same)) == 1
    differ = set_formats(annotated, {"expand1x1/inputs": "fixed:8:4", "expand3x3/inputs": "fixed:8:5"})
    assert len(_qsims(differ)) == 2
    slots = {s.group: s for s in read_slots(same)}
    second = next(n for n in same.graph.node if n.name == slots["expand3x3/inputs"].node)
    assert (second.op_type, second.input[0]) == ("Identity", slots["expand1x1/inputs"].output)


def test_tied_weights_are_quantized_once():
    annotated = _annotated("shared_weights")
    sim = set_formats(annotated, {"fc1/weights": "fixed:8:7", "fc2/weights": "fixed:8:7"})
    assert [n.name for n in _qsims(sim)] == ["qslot:fc1/weights"]
    assert len(_qsims(set_formats(annotated, {"fc1/weights": "fixed:8:7", "fc2/weights": "fixed:4:3"}))) == 2


def test_next_layer_input_reuses_the_previous_layer_output_quantizer():
    annotated = _annotated("conv_conv")
    same = set_formats(annotated, {"conv1/outputs": "fixed:8:3", "conv2/inputs": "fixed:8:3"})
    assert [n.name for n in _qsims(same)] == ["qslot:conv1/outputs"]
    differ = set_formats(annotated, {"conv1/outputs": "fixed:8:3", "conv2/inputs": "fixed:6:3"})
    assert len(_qsims(differ)) == 2
    x = synth.sample_input(same)
    only_out = set_formats(annotated, {"conv1/outputs": "fixed:8:3"})
    np.testing.assert_array_equal(_run(same, x), _run(only_out, x))  # quantizing twice = once


def test_replanning_an_annotated_model_needs_no_reinsertion_and_matches_a_fresh_plan():
    annotated = _annotated("flatten_gemm")
    first = set_formats(annotated, {g: "fixed:8:4" for g in ("conv/weights", "fc1/inputs", "fc2/outputs")})
    second_plan = {"conv/weights": "minifloat:8:4", "fc1/outputs": "fixed:8:2"}
    replanned = set_formats(first, second_plan)
    fresh = set_formats(annotated, second_plan)
    assert len(replanned.graph.node) == len(annotated.graph.node)
    x = synth.sample_input(annotated)
    np.testing.assert_array_equal(_run(replanned, x), _run(fresh, x))
    assert read_plan(replanned)["conv/weights"] == parse_format("minifloat:8:4")
    assert read_plan(replanned)["fc1/inputs"] is None
    assert {f.overload for f in replanned.functions} == {f.overload for f in fresh.functions}


def test_per_channel_weight_format_with_a_non_negative_axis():
    m = load_model(synth.conv_relu_conv())
    w1 = _init(m, "w1")
    fmt = PerChannel(tuple(Fixed(8, 7 - i % 2) for i in range(4)), axis=0)
    sim = set_formats(insert_quantizers(m), {"conv1/weights": fmt})
    x = synth.sample_input(m)
    c1 = _conv(x, quantize(w1, fmt), _init(m, "b1"), pads=[1, 1, 1, 1])
    expected = _conv(np.maximum(c1, 0), _init(m, "w2"), _init(m, "b2"))
    # float layers may be fused (Conv+Relu) in the simulated model: equal up to float rounding
    np.testing.assert_allclose(_run(sim, x), expected, rtol=1e-5, atol=1e-6)
    node = _qsims(sim)[0]
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "axis")) == -4


def test_stochastic_rounding_runs():
    sim = set_formats(_annotated("conv_relu_conv"), {"conv1/inputs": "fixed:8:4"}, rounding="stochastic")
    assert _qsims(sim)[0].overload.endswith("_sr")
    assert np.isfinite(_run(sim, synth.sample_input(sim))).all()


def test_input_is_not_modified_and_errors_are_clear():
    annotated = _annotated("conv_relu_conv")
    before = annotated.SerializeToString()
    set_formats(annotated, PLAN)
    assert annotated.SerializeToString() == before
    with pytest.raises(RistrettoError, match="does not have.*'conv3/weights'"):
        set_formats(annotated, {"conv3/weights": "fixed:8:4"})
    with pytest.raises(RistrettoError, match="cannot parse format"):
        set_formats(annotated, {"conv1/weights": "fixed:8"})
    with pytest.raises(RistrettoError, match="unknown rounding"):
        set_formats(annotated, {}, rounding="up")
    with pytest.raises(RistrettoError, match="no quantizer slots"):
        set_formats(load_model(synth.conv_relu_conv()), {})


def test_set_formats_is_fast_enough_for_a_search():
    annotated = _annotated("residual_block")
    plan = {g: "fixed:8:4" for g in (s.group for s in read_slots(annotated))}
    t = time.process_time()  # CPU time: other jobs on the cores must not fail this test
    for _ in range(50):
        set_formats(annotated, plan)
    assert (time.process_time() - t) / 50 < 0.05


def _relus(m):
    return [n.name for n in m.graph.node if n.op_type == "Relu"]


def test_inputs_reuse_the_output_format_through_pooling_reshapes_and_relu_and_skip_the_relu():
    annotated = _annotated("flatten_gemm")
    plan = {"conv/outputs": "fixed:8:3", "fc1/inputs": "fixed:8:3",     # through MaxPool, Flatten
            "fc1/outputs": "ufixed:8:4", "fc2/inputs": "ufixed:8:4",    # through the ReLU
            "fc1/weights": "fixed:8:6", "fc2/outputs": "fixed:8:4"}
    sim = set_formats(annotated, plan)
    assert [n.name for n in _qsims(sim)] == ["qslot:conv/outputs", "qslot:fc1/weights", "qslot:fc1/outputs",
                                             "qslot:fc2/outputs"]
    assert _relus(sim) == [] and read_skipped_relus(sim) == ("relu",)  # its input cannot be negative
    x = synth.sample_input(annotated, batch=64, scale=4.0)
    literal = synth.literal_model(sim)
    assert len(_qsims(literal)) == 6 and _relus(literal) == ["relu"]
    assert synth.same_bits(_run(sim, x), _run(literal, x)).all()
    # another format, or a signed one before the ReLU: the quantizer and the ReLU stay
    other = set_formats(annotated, plan | {"fc1/inputs": "fixed:8:2", "fc1/outputs": "fixed:8:4",
                                           "fc2/inputs": "fixed:8:4"})
    assert "qslot:fc1/inputs" in [n.name for n in _qsims(other)] and _relus(other) == ["relu"]
    assert "qslot:fc2/inputs" not in [n.name for n in _qsims(other)]  # fixed:8:4 through the ReLU
    assert read_skipped_relus(other) == ()
    assert synth.same_bits(_run(other, x), _run(synth.literal_model(other), x)).all()


def test_a_per_channel_format_is_reused_only_where_the_channel_axis_stays():
    annotated = _annotated("conv_relu_conv")
    fmt = PerChannel((Fixed(8, 3), Fixed(8, 4), Fixed(8, 5), Fixed(8, 2)), axis=1)
    sim = set_formats(annotated, {"conv1/outputs": fmt, "conv2/inputs": fmt})
    assert [n.name for n in _qsims(sim)] == ["qslot:conv1/outputs"]
    x = synth.sample_input(annotated, batch=16, scale=4.0)
    assert synth.same_bits(_run(sim, x), _run(synth.literal_model(sim), x)).all()
    flat = _annotated("flatten_gemm")
    channels = PerChannel((Fixed(8, 3), Fixed(8, 4)), axis=1)
    kept = set_formats(flat, {"conv/outputs": channels, "fc1/inputs": channels})
    assert len(_qsims(kept)) == 2  # Flatten moves the channels: no reuse


def test_replanning_a_written_model_restores_the_relus_it_skipped():
    annotated = _annotated("flatten_gemm")
    plan = {"fc1/outputs": "ufixed:8:4", "fc2/inputs": "ufixed:8:4", "fc1/weights": "fixed:8:6"}
    written = set_formats(annotated, plan)
    assert read_skipped_relus(written) == ("relu",)
    x = synth.sample_input(annotated, batch=16, scale=4.0)
    as_float = set_formats(written, {})
    assert _relus(as_float) == ["relu"] and read_skipped_relus(as_float) == ()
    assert synth.same_bits(_run(as_float, x), _run(set_formats(annotated, {}), x)).all()
    again = set_formats(written, plan)
    assert again.graph == written.graph and read_skipped_relus(again) == ("relu",)
    signed = set_formats(written, plan | {"fc1/outputs": "fixed:8:4"})
    assert _relus(signed) == ["relu"]
    fresh = set_formats(annotated, plan | {"fc1/outputs": "fixed:8:4"})
    assert synth.same_bits(_run(signed, x), _run(fresh, x)).all()
    from ristretto_onnx.runtime.simulator import Simulator

    sim = Simulator(written)
    sim.set_formats({}, replace=True)
    assert synth.same_bits(sim.run(x), _run(as_float, x)).all()
