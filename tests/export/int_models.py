"""Synthetic CNNs for the integer and C exports: every op of the integer data path in one graph."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ristretto_onnx.data import load_dataset
from ristretto_onnx.quantize import QuantizeOptions, quantize


def _w(shape, seed: int, scale: float = 0.4) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _dyadic_bias(n: int, seed: int) -> np.ndarray:
    """Biases on a 2**-6 grid: exactly representable in every accumulator below, so the float32
    simulation adds them without rounding and the integer model must match it bit for bit."""
    return (np.random.default_rng(seed).integers(-20, 20, n) / 64.0).astype(np.float32)


def kitchen_sink(avg: int = 3) -> onnx.ModelProto:
    """conv -> relu -> maxpool -> depthwise conv -> relu6 -> grouped conv -> residual add -> relu
    -> {avg x avg average pool, 1x1 conv} -> concat -> global average pool (8x8) -> flatten -> gemm.

    ``avg=3`` divides by 9 (not a shift: the float32 simulation rounds the averages), ``avg=2``
    by 4 (a shift: every sum of the simulation is exact in float32)."""
    i = lambda name, v: numpy_helper.from_array(np.asarray(v), name)  # noqa: E731
    inits = [
        i("w1", _w((8, 3, 3, 3), 1)), i("b1", _dyadic_bias(8, 2)),
        i("wd", _w((8, 1, 3, 3), 3)), i("bd", _dyadic_bias(8, 4)),
        i("wg", _w((8, 4, 1, 1), 5)), i("bg", _dyadic_bias(8, 6)),
        i("wb", _w((4, 8, 1, 1), 7)), i("bb", _dyadic_bias(4, 8)),
        i("wf", _w((10, 12), 9)), i("bf", _dyadic_bias(10, 10)),
        i("zero", np.float32(0.0)), i("six", np.float32(6.0)),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["p1", "wd", "bd"], ["cd"], name="dw", pads=[1, 1, 1, 1], group=8),
        n("Clip", ["cd", "zero", "six"], ["rd"], name="relu6"),
        n("Conv", ["rd", "wg", "bg"], ["cg"], name="grouped", group=2),
        n("Add", ["cg", "p1"], ["s"], name="residual"),
        n("Relu", ["s"], ["rs"], name="relu2"),
        n("AveragePool", ["rs"], ["ap"], name="avg", kernel_shape=[avg, avg], count_include_pad=1,
          pads=[1, 1, 1, 1] if avg == 3 else [0, 0, 1, 1]),
        n("Conv", ["rs", "wb", "bb"], ["cb"], name="branch"),
        n("Concat", ["ap", "cb"], ["cat"], name="concat", axis=1),
        n("GlobalAveragePool", ["cat"], ["gp"], name="gap"),
        n("Flatten", ["gp"], ["fl"], name="flatten"),
        n("Gemm", ["fl", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "kitchen_sink",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def inputs(n: int = 64, seed: int = 11) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, 3, 16, 16)) * 1.5).astype(np.float32)


def simulated(bits: int = 8, avg: int = 3, **options) -> onnx.ModelProto:
    """The dfp simulation of :func:`kitchen_sink` with inputs, weights and outputs quantized."""
    calib = load_dataset(inputs(128, seed=3))
    # dyadic biases by design: bias correction (which would make them arbitrary floats) stays off
    opts = QuantizeOptions(scheme="dfp", bits=bits, fold_bn=False, **{"bias_correction": "off", **options})
    return quantize(kitchen_sink(avg), opts, calib).model


def pools_and_matmul(global_pool: bool) -> onnx.ModelProto:
    """conv -> MaxPool(3, stride 2, pad 1) -> Reshape -> MatMul + Add, or
    conv -> GlobalMaxPool -> Flatten -> Gemm (transB=0)."""
    i = lambda name, v: numpy_helper.from_array(np.asarray(v), name)  # noqa: E731
    n = helper.make_node
    inits = [i("w1", _w((4, 3, 1, 1), 21)), i("b1", _dyadic_bias(4, 22))]
    nodes = [n("Conv", ["x", "w1", "b1"], ["c1"], name="conv1")]
    if global_pool:
        inits += [i("wf", _w((4, 5), 23)), i("bf", _dyadic_bias(5, 24))]
        nodes += [n("GlobalMaxPool", ["c1"], ["p"], name="gmp"), n("Flatten", ["p"], ["f"], name="flatten"),
                  n("Gemm", ["f", "wf", "bf"], ["y"], name="fc")]
    else:
        inits += [i("shape", np.array([-1, 4 * 8 * 8], dtype=np.int64)), i("wf", _w((256, 5), 25, 0.1)),
                  i("bf", _dyadic_bias(5, 26))]
        nodes += [n("MaxPool", ["c1"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                  n("Reshape", ["p", "shape"], ["f"], name="reshape"),
                  n("MatMul", ["f", "wf"], ["m"], name="fc"), n("Add", ["m", "bf"], ["y"], name="fc_bias")]
    graph = helper.make_graph(nodes, "pools", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def simulated_pools(global_pool: bool, bits: int) -> onnx.ModelProto:
    calib = load_dataset(inputs(128, seed=3))
    return quantize(pools_and_matmul(global_pool), QuantizeOptions(scheme="dfp", bits=bits, fold_bn=False,
                                                                   bias_correction="off"), calib).model
