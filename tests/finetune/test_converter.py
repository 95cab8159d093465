"""The ONNX -> torch converter, op by op against onnxruntime, and on whole simulated models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from ristretto_onnx.errors import RistrettoError  # noqa: E402
from ristretto_onnx.finetune.converter import OnnxModule  # noqa: E402
from ristretto_onnx.runtime.session import create_session  # noqa: E402

RNG = np.random.default_rng(5)


def _rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _model(node, x_shape, inits, opset=17, extra_nodes=()):
    graph = helper.make_graph(
        [*extra_nodes, node], "op",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _compare(model, x, atol=1e-5):
    ref = create_session(model, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    module = OnnxModule(model).eval()
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=atol, rtol=1e-5)


X4 = (2, 4, 9, 9)


CASES = {
    "conv": (dict(op="Conv", inputs=["X", "W", "B"], kernel_shape=[3, 3]),
             {"W": _rand(6, 4, 3, 3), "B": _rand(6)}, X4),
    "conv_strided_padded": (dict(op="Conv", inputs=["X", "W"], strides=[2, 2], pads=[1, 1, 1, 1]),
                            {"W": _rand(6, 4, 3, 3)}, X4),
    "conv_asymmetric_pads_dilated": (dict(op="Conv", inputs=["X", "W"], pads=[0, 1, 2, 1], dilations=[2, 1]),
                                     {"W": _rand(3, 4, 3, 3)}, X4),
    "conv_grouped": (dict(op="Conv", inputs=["X", "W", "B"], group=2),
                     {"W": _rand(6, 2, 3, 3), "B": _rand(6)}, X4),
    "conv_depthwise_same_upper": (dict(op="Conv", inputs=["X", "W"], group=4, auto_pad="SAME_UPPER", strides=[2, 2]),
                                  {"W": _rand(4, 1, 3, 3)}, X4),
    "conv_1d": (dict(op="Conv", inputs=["X", "W"], pads=[1, 1]), {"W": _rand(5, 3, 3)}, (2, 3, 11)),
    "conv_transpose": (dict(op="ConvTranspose", inputs=["X", "W", "B"], strides=[2, 2], pads=[1, 1, 1, 1],
                            output_padding=[1, 1]), {"W": _rand(4, 3, 3, 3), "B": _rand(3)}, X4),
    "conv_transpose_grouped": (dict(op="ConvTranspose", inputs=["X", "W"], group=2, pads=[0, 1, 1, 0]),
                               {"W": _rand(4, 2, 2, 2)}, X4),
    "gemm": (dict(op="Gemm", inputs=["X", "W", "B"], transB=1, alpha=0.5, beta=2.0),
             {"W": _rand(7, 12), "B": _rand(7)}, (3, 12)),
    "gemm_transA": (dict(op="Gemm", inputs=["X", "W"], transA=1), {"W": _rand(3, 5)}, (3, 4)),
    "matmul": (dict(op="MatMul", inputs=["X", "W"]), {"W": _rand(6, 5)}, (2, 3, 6)),
    "relu": (dict(op="Relu", inputs=["X"]), {}, X4),
    "clip": (dict(op="Clip", inputs=["X", "lo", "hi"]), {"lo": np.float32(-0.5), "hi": np.float32(0.7)}, X4),
    "clip_max_only": (dict(op="Clip", inputs=["X", "", "hi"]), {"hi": np.float32(6.0)}, X4),
    "leaky_relu": (dict(op="LeakyRelu", inputs=["X"], alpha=0.2), {}, X4),
    "maxpool": (dict(op="MaxPool", inputs=["X"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), {}, X4),
    "maxpool_ceil": (dict(op="MaxPool", inputs=["X"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), {}, X4),
    "maxpool_asymmetric": (dict(op="MaxPool", inputs=["X"], kernel_shape=[2, 2], pads=[0, 0, 1, 1]), {}, X4),
    "avgpool": (dict(op="AveragePool", inputs=["X"], kernel_shape=[3, 3], strides=[2, 2]), {}, X4),
    "avgpool_pads_excluded": (dict(op="AveragePool", inputs=["X"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), {}, X4),
    "avgpool_pads_included": (dict(op="AveragePool", inputs=["X"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                   count_include_pad=1), {}, X4),
    "avgpool_asymmetric": (dict(op="AveragePool", inputs=["X"], kernel_shape=[2, 2], pads=[1, 0, 0, 1]), {}, X4),
    "avgpool_ceil": (dict(op="AveragePool", inputs=["X"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), {}, X4),
    "global_avgpool": (dict(op="GlobalAveragePool", inputs=["X"]), {}, X4),
    "add_broadcast": (dict(op="Add", inputs=["X", "C"]), {"C": _rand(4, 1, 1)}, X4),
    "mul": (dict(op="Mul", inputs=["X", "C"]), {"C": _rand(9)}, X4),
    "concat": (dict(op="Concat", inputs=["X", "C"], axis=1), {"C": _rand(2, 3, 9, 9)}, X4),
    "flatten": (dict(op="Flatten", inputs=["X"]), {}, X4),
    "flatten_axis2": (dict(op="Flatten", inputs=["X"], axis=2), {}, X4),
    "reshape": (dict(op="Reshape", inputs=["X", "S"]), {"S": np.array([0, -1, 9], np.int64)}, X4),
    "pad_constant": (dict(op="Pad", inputs=["X", "P", "V"]),
                     {"P": np.array([0, 1, 2, 0, 0, 3, 0, 1], np.int64), "V": np.float32(1.5)}, X4),
    "pad_reflect": (dict(op="Pad", inputs=["X", "P"], mode="reflect"),
                    {"P": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}, X4),
    "pad_edge": (dict(op="Pad", inputs=["X", "P"], mode="edge"),
                 {"P": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}, X4),
    "softmax": (dict(op="Softmax", inputs=["X"]), {}, (3, 10)),
    "softmax_axis1": (dict(op="Softmax", inputs=["X"], axis=1), {}, X4),
    "batchnorm": (dict(op="BatchNormalization", inputs=["X", "s", "b", "m", "v"], epsilon=1e-3),
                  {"s": _rand(4), "b": _rand(4), "m": _rand(4), "v": np.abs(_rand(4)) + 0.1}, X4),
    "slice_steps": (dict(op="Slice", inputs=["X", "st", "en", "ax", "sp"]),
                    {"st": np.array([0, 1], np.int64), "en": np.array([2**62, -1], np.int64),
                     "ax": np.array([2, 3], np.int64), "sp": np.array([2, 3], np.int64)}, X4),
    "transpose": (dict(op="Transpose", inputs=["X"], perm=[0, 2, 3, 1]), {}, X4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_onnxruntime(case):
    spec, inits, shape = CASES[case]
    spec = dict(spec)
    op, inputs = spec.pop("op"), spec.pop("inputs")
    node = helper.make_node(op, inputs, ["Y"], name=case, **spec)
    _compare(_model(node, shape, inits), _rand(*shape))


def test_constant_subgraphs_are_folded():
    # the ResNets' option-A shortcut: pads computed at run time from Constant nodes
    c = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array([0, 2, 0, 0], np.int64)))
    cc = helper.make_node("Concat", ["c", "c"], ["pads"], axis=0)
    node = helper.make_node("Pad", ["X", "pads"], ["Y"])
    _compare(_model(node, X4, {}, extra_nodes=[c, cc]), _rand(*X4))


def test_unsupported_ops_are_named_in_one_error():
    nodes = [helper.make_node("Erf", ["X"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Gelu", ["b"], ["Y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(_rand(3, 3), "W")])
    graph.node.append(helper.make_node("MatMul", ["Y", "W"], ["Z"]))
    graph.output[0].name = "Z"
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    with pytest.raises(RistrettoError, match=r"unsupported op\(s\) Erf, Gelu"):
        OnnxModule(m)


def test_simulated_digits_model_matches_onnxruntime_and_marks_weight_quantizers(digits_sim):
    from ristretto_onnx import zoo

    model = digits_sim
    x, _ = next(zoo.model_dataset("digits-cnn", "test").batches(500))
    module = OnnxModule(model).eval()
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    ref = create_session(model).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert (got.argmax(1) == ref.argmax(1)).all()
    weights = {q.node_name for q in module.quantizers if q.is_weight}
    assert weights == {n.name for n in model.graph.node if n.op_type == "QuantizeSim" and "weights" in n.name}
    assert set(module.param_names) == {t.name for t in model.graph.initializer}  # weights and biases
