"""--to integer: the bit-true integer model against the float-accumulation simulation."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.export.int_lower import lower
from ristretto_onnx.export.int_program import rne_div
from ristretto_onnx.export.integer import INTEGER_KEY, export_integer
from ristretto_onnx.export.integer_check import agreement, run_batches
from ristretto_onnx.formats import quantize
from ristretto_onnx.ops import attach_functions, make_quantize_node
from ristretto_onnx.passes.pipeline import prepare, simulate
from ristretto_onnx.passes.slots import read_plan
from tests.export import int_models


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return next(run_batches(model, [x]))


def chain_model(*formats: str) -> onnx.ModelProto:
    """x -> QuantizeSim(f1) -> QuantizeSim(f2) -> ... -> y: pure re-quantizations."""
    nodes, prev = [], "x"
    for i, fmt in enumerate(formats):
        out = "y" if i == len(formats) - 1 else f"q{i}"
        nodes.append(make_quantize_node(prev, out, fmt))
        prev = out
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])])
    return attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))


def tie_inputs() -> np.ndarray:
    """Every multiple of 2**-8 in [-200, 200): halfway cases for every shift, both signs, saturation."""
    return (np.arange(-200 * 256, 200 * 256) / 256.0).astype(np.float32).reshape(-1, 1)


def test_rne_div_is_the_fixed_point_quantizer():
    rng = np.random.default_rng(0)
    k = np.concatenate([rng.integers(-(2**22), 2**22, 20000), np.arange(-4096, 4096)])
    for shift in range(1, 12):
        want = quantize((k * 2.0**-shift).astype(np.float32), "fixed:32:0").astype(np.int64)
        np.testing.assert_array_equal(rne_div(k, 2**shift), want)
    np.testing.assert_array_equal(rne_div(np.array([-7, -5, -3, -1, 1, 3, 5, 7]), 2), [-4, -2, -2, 0, 0, 2, 2, 4])
    np.testing.assert_array_equal(rne_div(np.array([-27, -9, 9, 27, 45]), 18), [-2, 0, 0, 2, 2])


@pytest.mark.parametrize("formats", [
    ("fixed:16:8", "fixed:8:3"),       # right shift by 5 with saturation at ±16
    ("fixed:16:8", "fixed:6:-2"),      # negative fractional length
    ("fixed:12:4", "fixed:16:9"),      # left shift
    ("fixed:16:8", "fixed:10:4", "fixed:4:1"),
])
@pytest.mark.parametrize("shift", ["float64", "int64"])
def test_requantization_is_exact_on_ties_and_saturation(formats, shift):
    sim = chain_model(*formats)
    x = tie_inputs()
    want = _run(sim, x)
    got = _run(export_integer(sim, shift=shift), x)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bits,avg,granularity", [
    (8, 2, "tensor"), (8, 2, "channel"), (10, 2, "tensor"), (10, 2, "channel"), (12, 2, "channel"),
])
def test_integer_model_equals_simulation_where_float32_is_exact(bits, avg, granularity):
    # dyadic biases, power-of-two pool windows and sums below 2**24 steps: the float32
    # simulation computes every value exactly, so the integer model must equal it bit for bit
    sim = int_models.simulated(bits, avg, weight_granularity=granularity)
    integer = export_integer(sim)
    x = int_models.inputs(256)
    a = agreement(_run(sim, x), _run(integer, x))
    assert a.differing_values == 0 and a.max_abs_diff == 0.0, a


@pytest.mark.parametrize("bits,granularity", [(8, "tensor"), (8, "channel"), (10, "tensor"), (10, "channel")])
def test_float32_rounding_in_the_simulation_shows_as_rare_small_differences(bits, granularity):
    # A 3x3 average (divisor 9): the simulation's float32 averages of non-dyadic values round, the
    # integer model's rounded division is exact; a flipped rounding changes an output by a step
    # or two in a few samples at most.
    sim = int_models.simulated(bits, 3, weight_granularity=granularity)
    x = int_models.inputs(256)
    integer = export_integer(sim)
    a = agreement(_run(sim, x), _run(integer, x))
    step = 2.0 ** -read_plan(sim)["fc/outputs"].frac_bits  # one step of the output format
    assert a.differing_samples <= 3 and a.top1_disagreements <= 1, a
    assert a.max_abs_diff <= 2 * step, a


def test_int64_and_float64_shift_renderings_agree():
    sim = int_models.simulated(10, 3, weight_granularity="channel")
    x = int_models.inputs(128)
    np.testing.assert_array_equal(_run(export_integer(sim, shift="int64"), x), _run(export_integer(sim), x))


def _mac_weights(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    names = {n.input[1] for n in model.graph.node if n.op_type in ("ConvInteger", "MatMulInteger")}
    return [i for i in model.graph.initializer if i.name in names]


def test_integer_model_is_integer_arithmetic():
    integer = export_integer(int_models.simulated(8, 3))
    ops = {n.op_type for n in integer.graph.node}
    assert {"ConvInteger", "MatMulInteger"} <= ops
    assert not ops & {"Conv", "Gemm", "MatMul", "QuantizeSim", "AveragePool"}
    weights = _mac_weights(integer)
    assert len(weights) >= 6 and all(i.data_type == TensorProto.INT8 for i in weights)  # 5 layers, 1 pool
    assert integer.ir_version == 10
    summary = json.loads(next(p.value for p in integer.metadata_props if p.key == INTEGER_KEY))
    assert [n["layer"] for n in summary["layers"]] == ["conv1", "dw", "grouped", "branch", "fc"]
    assert all(n["bias"] == "exact" and n["guard_bits"] == 0 for n in summary["layers"])
    assert all(n["float32_exact_sum"] and n["float32_exact"] for n in summary["layers"])
    assert summary["float32_may_round"] == [] and summary["float_nodes"] == []


def test_wide_operands_are_split_into_bytes():
    integer = export_integer(int_models.simulated(12, 2))
    weights = _mac_weights(integer)
    assert {i.data_type for i in weights} == {TensorProto.INT8, TensorProto.UINT8}
    assert sum(n.op_type == "ConvInteger" for n in integer.graph.node) >= 4 * 4


def test_float_bias_gets_guard_bits_or_is_rounded():
    model = int_models.kitchen_sink(2)
    for init in model.graph.initializer:
        if init.name == "b1":
            init.CopyFrom(onnx.numpy_helper.from_array(np.array([0.1] * 8, dtype=np.float32), "b1"))
    prepared = prepare(model, fold_bn=False)
    plan = {g: "fixed:8:4" for g in prepared.layers.group_ids if not g.endswith("bias")}
    sim = simulate(prepared, plan)
    exact = {n.layer: n for n in lower(sim).notes}
    rounded = {n.layer: n for n in lower(sim, exact_bias=False).notes}
    assert exact["conv1"].bias == "exact" and exact["conv1"].guard_bits > 0  # 0.1f needs 27 bits
    assert exact["conv1"].float32_exact_sum and not exact["conv1"].float32_exact
    assert rounded["conv1"].bias == "rounded" and rounded["conv1"].guard_bits == 0
    x = int_models.inputs(64)
    np.testing.assert_array_equal(_run(export_integer(sim), x), _run(sim, x))


def _sim_with(plan_update: dict, rounding: str = "nearest_even") -> onnx.ModelProto:
    prepared = prepare(int_models.kitchen_sink(2), fold_bn=False)
    plan = {g: "fixed:8:4" for g in prepared.layers.group_ids if not g.endswith("bias")}
    plan.update(plan_update)
    return simulate(prepared, plan, rounding=rounding)


def test_pow2_weights_are_fixed_point():
    sim = _sim_with({"conv1/weights": "pow2:-6:-1", "fc/weights": "pow2:-7:0"})
    x = int_models.inputs(64)
    np.testing.assert_array_equal(_run(export_integer(sim), x), _run(sim, x))


@pytest.mark.parametrize("update,rounding,match", [
    ({"dw/outputs": "minifloat:8:4"}, "nearest_even", r"tensor 'cd__float' has format minifloat:8:4"),
    ({"conv1/weights": "minifloat:8:3"}, "nearest_even", r"tensor 'w1' has format minifloat:8:3"),
    ({"conv1/weights": "pow2:-30:-1"}, "nearest_even", r"needs 31 bits; at most 16"),
    ({"grouped/weights": None}, "nearest_even", r"node 'grouped' \(Conv\): its weights are float"),
    ({"conv1/inputs": None}, "nearest_even", r"node 'conv1' \(Conv\): its input is float"),
    ({}, "stochastic", r"stochastic rounding"),
])
def test_formats_without_an_integer_data_path_are_one_line_errors(update, rounding, match):
    with pytest.raises(RistrettoError, match=match):
        export_integer(_sim_with(update, rounding))


def test_compare_counts_differences_on_a_dataset():
    from ristretto_onnx.data import load_dataset
    from ristretto_onnx.export.integer_check import compare

    sim = int_models.simulated(10, 3)
    x = int_models.inputs(256)
    labels = _run(sim, x).argmax(axis=1)
    a = compare(sim, export_integer(sim), load_dataset(x, labels=labels), batch_size=100, limit=200)
    assert a.samples == 200 and a.values == 2000 and a.top1_sim == 1.0
    b = agreement(_run(sim, x[:200]), _run(export_integer(sim), x[:200]), labels[:200])
    assert a == b
