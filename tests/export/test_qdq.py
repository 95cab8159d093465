"""export --to qdq on synthetic graphs: exact outputs, the Q/DQ structure TensorRT expects."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from ristretto_onnx.export.qdq import export_qdq, float8_match, float8_values, minifloat_values
from ristretto_onnx.formats import Minifloat
from ristretto_onnx.ops import DOMAIN, default_opset
from tests.export.sims import EVERY_SIM, export_checked, run, sample, sim_model


@EVERY_SIM
def test_qdq_outputs_equal_the_simulation_exactly(name, config):
    sim, qdq = export_checked(export_qdq, name, config)
    x = sample(name)
    for level in ("project", "disable_all"):
        ref, got = run(sim, x, level=level), run(qdq, x, level=level)
        assert np.array_equal(got, ref), (level, float(np.abs(got - ref).max()))
    # the outputs are not trivially zero (except minifloat:8 on matmul_add, whose 2-bit-exponent (minifloat:8:2, smallest normal 1)
    # output format flushes that graph's small outputs)
    assert np.abs(ref).max() > 0 or (name, config) == ("matmul_add", "minifloat8")


def _nodes(model, op_type):
    return [n for n in model.graph.node if n.op_type == op_type]


def _inits(model):
    return {t.name: t for t in model.graph.initializer}


@pytest.mark.parametrize("config", ["dfp8", "dfp3", "w4a12", "dfp6-channel-bias", "dfp16"])
def test_fixed_point_becomes_symmetric_power_of_two_qdq(config):
    sim = sim_model("flatten_gemm", config)
    qdq = export_qdq(sim)
    assert not [n for n in qdq.graph.node if n.domain == DOMAIN]
    assert not qdq.functions and DOMAIN not in {i.domain for i in qdq.opset_import}
    inits = _inits(qdq)
    dq_nodes = _nodes(qdq, "DequantizeLinear")
    assert dq_nodes
    for node in _nodes(qdq, "QuantizeLinear") + dq_nodes:
        scale = numpy_helper.to_array(inits[node.input[1]])
        assert np.array_equal(scale, np.ldexp(1.0, np.round(np.log2(scale)).astype(int)).astype(np.float32))
        zero = numpy_helper.to_array(inits[node.input[2]])
        assert not np.any(zero.astype(np.int64))
    types = {inits[n.input[2]].data_type for n in _nodes(qdq, "QuantizeLinear")}
    # ReLU outputs and the inputs after them are ufixed: uint8 (uint16 above 8 bits)
    u8, u16 = TensorProto.UINT8, TensorProto.UINT16
    expect = {"dfp8": {TensorProto.INT8, u8}, "dfp3": {TensorProto.INT4, u8}, "w4a12": {TensorProto.INT16, u16},
              "dfp6-channel-bias": {TensorProto.INT8, u8}, "dfp16": {TensorProto.INT16, u16}}[config]
    assert types == expect
    narrow = bool(types & {TensorProto.INT4, TensorProto.INT16, u16})
    assert default_opset(qdq) == (21 if narrow else 17)
    clips = _nodes(qdq, "Clip") + _nodes(qdq, "Min")  # int4: Max + Min (onnxruntime's ClipQuantFusion)
    assert len(clips) == (0 if config in ("dfp8", "dfp16") else len(_nodes(qdq, "QuantizeLinear")))
    clipped = {n.output[0] for n in _nodes(qdq, "Clip")}
    clip_types = {inits[n.input[2]].data_type for n in _nodes(qdq, "QuantizeLinear") if n.input[0] in clipped}
    # int4 clips are Max + Min; a uint8 (ufixed) QuantizeLinear takes a plain Clip
    assert clip_types <= {u8} if config == "dfp3" else not _nodes(qdq, "Min")


def test_per_channel_weights_dequantize_on_the_output_channel_axis():
    qdq = export_qdq(sim_model("conv_relu_conv", "dfp6-channel-bias"))
    inits = _inits(qdq)
    weight_dq = [n for n in _nodes(qdq, "DequantizeLinear") if n.input[0] in inits]
    per_channel = [n for n in weight_dq if numpy_helper.to_array(inits[n.input[1]]).ndim == 1]
    assert len(per_channel) == 2  # conv1 and conv2 weights
    for node in per_channel:
        ints = numpy_helper.to_array(inits[node.input[0]])
        assert ints.dtype == np.int8 and ints.min() >= -32 and ints.max() <= 31  # 6-bit values in int8
        assert {a.name: a.i for a in node.attribute}["axis"] == 0
        assert numpy_helper.to_array(inits[node.input[1]]).shape == (ints.shape[0],)


def test_pow2_and_minifloat_weights_become_constants_on_the_grid():
    for config, kept in (("pow2-channel", 0), ("minifloat8", 1)):
        sim = sim_model("conv_relu_conv", config)
        qdq = export_qdq(sim)
        sims = [n for n in qdq.graph.node if n.domain == DOMAIN]
        weights = [n for n in sim.graph.node if n.domain == DOMAIN and "weights" in n.name]
        assert weights and not any(n.name in {s.name for s in sims} for n in weights)
        assert bool(sims) == bool(kept)  # minifloat activations keep their QuantizeSim bodies
        assert bool(qdq.functions) == bool(kept)


def test_no_float8_type_has_the_grid_of_our_minifloat():
    e4m3fn = float8_values(TensorProto.FLOAT8E4M3FN)
    ours = minifloat_values(Minifloat(8, 4))
    assert e4m3fn.max() == 448 and ours.max() == 480            # NaN code vs all-normal codes
    assert e4m3fn[e4m3fn > 0].min() == 2.0**-9 and ours[ours > 0].min() == 2.0**-6  # denormals vs none
    for exp_bits in range(1, 8):
        assert float8_match(Minifloat(8, exp_bits)) is None
    for name, dtype in (("FLOAT8E5M2", TensorProto.FLOAT8E5M2), ("FLOAT8E4M3FNUZ", TensorProto.FLOAT8E4M3FNUZ)):
        values = float8_values(dtype)
        assert values.size > 200 and values[values > 0].min() < values[values > 0][1] / 1.9  # denormal spacing


def test_stochastic_rounding_stays_a_quantize_sim_node():
    from ristretto_onnx.passes.pipeline import prepare, simulate
    from tests import builders as synth

    prepared = prepare(synth.conv_relu_conv())
    plan = {g: "fixed:8:4" for g in prepared.layers.group_ids if not g.endswith("/bias")}
    qdq = export_qdq(simulate(prepared, plan, rounding="stochastic"))
    assert not _nodes(qdq, "QuantizeLinear")
    assert len([n for n in qdq.graph.node if n.domain == DOMAIN]) >= 4
    assert qdq.functions


def test_fixed_point_wider_than_int16_keeps_activations_in_quantize_sim():
    qdq = export_qdq(sim_model("conv_relu_conv", "fixed24"))
    inits = _inits(qdq)
    assert not _nodes(qdq, "QuantizeLinear")
    weight_dq = _nodes(qdq, "DequantizeLinear")
    assert len(weight_dq) == 2 and {inits[n.input[0]].data_type for n in weight_dq} == {TensorProto.INT32}
    # conv1's inputs and outputs, conv2's outputs: conv2's inputs read conv1's output through the
    # ReLU in the same format, so set_formats wrote that slot as Identity (nothing to re-round)
    assert len([n for n in qdq.graph.node if n.domain == DOMAIN]) == 3 and qdq.functions
