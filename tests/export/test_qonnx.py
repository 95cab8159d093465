"""export --to qonnx on synthetic graphs, run in qonnx's own executor (its reference semantics)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from ristretto_onnx.export.qonnx import QONNX_DOMAIN, export_qonnx
from ristretto_onnx.ops import DOMAIN, is_quantize_sim, node_format
from tests.export.sims import EVERY_SIM, FLOAT_ACTIVATIONS, export_checked, run, sample, sim_model

qonnx = pytest.importorskip("qonnx")


def execute_qonnx(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Run ``model`` in ``qonnx.core.onnx_exec.execute_onnx`` with the batch fixed to ``len(x)``."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = len(x)
    del m.graph.value_info[:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # qonnx warns about shapes its inference left open
        wrapper = ModelWrapper(m).transform(InferShapes())
        out = execute_onnx(wrapper, {m.graph.input[0].name: x})
    return out[m.graph.output[0].name]


@EVERY_SIM
def test_qonnx_executor_reproduces_the_simulation(name, config):
    sim, out = export_checked(export_qonnx, name, config)
    assert not [n for n in out.graph.node if n.domain == DOMAIN] and not out.functions
    x = sample(name, batch=4)
    got, ref = execute_qonnx(out, x), run(sim, x)
    if config in FLOAT_ACTIVATIONS:  # float-precision sums, computed node by node by qonnx: order differs
        # pow2 weights: float outputs within float32 noise; fixed:24:12: at most one output step
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2.0**-12 if config == "fixed24" else 1e-5)
    elif config == "dfp16":  # 16 x 16-bit products overflow float32's 24-bit sums: order matters
        step = max(node_format(n)[0].step for n in sim.graph.node if is_quantize_sim(n))
        assert np.abs(got - ref).max() <= step  # one step of the coarsest format
    else:
        assert np.array_equal(got, ref), float(np.abs(got - ref).max())


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_fixed_point_is_signed_wide_round_half_even_quant():
    exported = export_qonnx(sim_model("flatten_gemm", "dfp6-channel-bias"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in exported.graph.initializer}
    quants = [n for n in exported.graph.node if n.op_type == "Quant"]
    # 14 slots less fc1/inputs (conv/outputs through MaxPool and Flatten) and fc2/inputs (fc1/outputs
    # through the ReLU): the same format, so set_formats wrote them as Identity
    assert len(quants) == 12 - 2 and all(n.domain == QONNX_DOMAIN for n in quants)
    signed = [_attrs(node).pop("signed") for node in quants]
    assert 0 in signed and 1 in signed  # ufixed after the ReLU: signed=0
    for node in quants:
        assert _attrs(node) in ({"signed": 1, "narrow": 0, "rounding_mode": b"ROUND"},
                                {"signed": 0, "narrow": 0, "rounding_mode": b"ROUND"})
        assert float(inits[node.input[3]]) == 6.0 and float(inits[node.input[2]]) == 0.0
        scale = inits[node.input[1]]
        assert np.array_equal(scale, np.exp2(np.round(np.log2(scale))))
    per_channel = [n for n in quants if inits[n.input[1]].size > 1]
    assert {inits[n.input[1]].shape for n in per_channel} == {(2, 1, 1, 1), (5, 1), (4,)}  # conv axis 0, Gemm transB axis 0, Gemm axis -1


def test_minifloat_is_floatquant_without_subnormals_then_a_flush():
    from ristretto_onnx.export.sim_graph import read_sim

    sim = sim_model("conv_relu_conv", "minifloat8")
    formats = {f"{q.node}:floatquant": q.format for q in read_sim(sim).quantizers}
    exported = export_qonnx(sim)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in exported.graph.initializer}
    fqs = [n for n in exported.graph.node if n.op_type == "FloatQuant"]
    assert len(fqs) == len(formats) == 5  # conv2/inputs: conv1/outputs through the ReLU, one format
    for node in fqs:
        fmt = formats[node.name]
        assert _attrs(node) == {"has_inf": 0, "has_nan": 0, "has_subnormal": 0, "saturation": 1,
                                "rounding_mode": b"ROUND"}
        scale, e, m, bias, top = (float(inits[i]) for i in node.input[1:])
        assert (scale, e, m, bias, top) == (1.0, fmt.exp_bits, fmt.mant_bits, fmt.bias, fmt.max_value)
        flush = [n for n in exported.graph.node if n.name == node.name.replace(":floatquant", ":flush_cmp")]
        assert float(inits[flush[0].input[1]]) == fmt.smallest_positive == 2.0**fmt.emin


def test_what_qonnx_cannot_express_is_inlined_as_standard_ops():
    from ristretto_onnx.passes.pipeline import prepare, simulate
    from tests import builders as synth

    prepared = prepare(synth.conv_relu_conv())
    plan = {g: "fixed:8:4" for g in prepared.layers.group_ids if g.endswith("/inputs")}
    plan["conv1/outputs"] = "pow2:-4:2"  # a power-of-two activation: no QONNX equivalent
    exported = export_qonnx(simulate(prepared, plan))
    ops = {n.op_type for n in exported.graph.node}
    assert "Quant" in ops and {"Log", "Gather", "Sign"} <= ops
    assert not [n for n in exported.graph.node if n.domain == DOMAIN] and not exported.functions
    x = sample("conv_relu_conv", batch=4)
    assert np.array_equal(execute_qonnx(exported, x), run(simulate(prepared, plan), x))
