"""Which single ops keep onnxruntime's CPU blocked layout (NCHWc) between two convolutions (issue 14).

    python bench/nchwc_ops.py

onnxruntime's NCHWc transformer keeps chains of Conv, pooling, ReLU and tensor-tensor Add in the
blocked layout; an op it does not handle gets a ReorderOutput before it and a ReorderInput after
it (two copies of the tensor). For each candidate op form of a quantizer body this builds
``Conv -> Relu -> OP -> Conv`` (16 channels, 32x32), lets onnxruntime optimize it and counts the
reorder nodes of the optimized graph (``SessionOptions.optimized_model_filepath``): 2 means the
chain is kept (one pair around the whole model), 4 means OP cut it.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

C = 16


def _s(name, value, dtype=np.float32, shape=()):
    return numpy_helper.from_array(np.array(value, dtype).reshape(shape), name)


def _model(mid, inits) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = [numpy_helper.from_array(rng.random((C, C, 3, 3), np.float32) * 0.1, n) for n in ("W", "W2")]
    nodes = ([helper.make_node("Conv", ["x", "W"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r"])]
             + mid + [helper.make_node("Conv", ["m", "W2"], ["y"], pads=[1, 1, 1, 1])])
    g = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 32, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], w + inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _bn(scale, bias):
    eps = 2.0**-20  # var + eps == 1 exactly: the BN is x * scale + bias, an NCHWc depthwise conv
    inits = [_s("bs", [scale] * C, shape=(C,)), _s("bb", [bias] * C, shape=(C,)), _s("bm", [0.0] * C, shape=(C,)),
             _s("bv", [1 - eps] * C, shape=(C,))]
    return [helper.make_node("BatchNormalization", ["r", "bs", "bb", "bm", "bv"], ["m"], epsilon=eps)], inits


CASES = {
    "Identity (FP32 chain)": ([helper.make_node("Identity", ["r"], ["m"])], []),
    "Add scalar": ([helper.make_node("Add", ["r", "k"], ["m"])], [_s("k", 3.0)]),
    "Sub scalar": ([helper.make_node("Sub", ["r", "k"], ["m"])], [_s("k", 3.0)]),
    "Mul scalar": ([helper.make_node("Mul", ["r", "k"], ["m"])], [_s("k", 2.0)]),
    "Add per-channel [1,C,1,1]": ([helper.make_node("Add", ["r", "k"], ["m"])], [_s("k", [3.0] * C, shape=(1, C, 1, 1))]),
    "Max scalar": ([helper.make_node("Max", ["r", "k"], ["m"])], [_s("k", 2.0)]),
    "Min scalar": ([helper.make_node("Min", ["r", "k"], ["m"])], [_s("k", 2.0)]),
    "Clip (after Relu: fused)": ([helper.make_node("Clip", ["r", "lo", "hi"], ["m"])], [_s("lo", -2.0), _s("hi", 2.0)]),
    "Round": ([helper.make_node("Round", ["r"], ["m"])], []),
    "QuantizeLinear/DequantizeLinear": ([helper.make_node("QuantizeLinear", ["r", "sc", "zp"], ["q"]),
                                         helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["m"])],
                                        [_s("sc", 0.25), _s("zp", 0, np.uint8)]),
    "BatchNormalization (x + 1.5*2^23)": _bn(1.0, 12582912.0),
    "Sigmoid": ([helper.make_node("Sigmoid", ["r"], ["m"])], []),
    "Add of two blocked tensors": ([helper.make_node("Add", ["r", "c1"], ["m"])], []),
    "Mul of two blocked tensors": ([helper.make_node("Mul", ["r", "c1"], ["m"])], []),
}


def reorders(model: onnx.ModelProto) -> tuple[int, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    return sum(op.startswith("Reorder") for op in ops), ops


def main() -> int:
    print(f"onnxruntime {ort.__version__}: reorder nodes around Conv -> Relu -> OP -> Conv (2 = chain kept)")
    for name, (mid, inits) in CASES.items():
        n, ops = reorders(_model(mid, inits))
        print(f"  {name:<36} {n}  {'kept' if n == 2 else 'CUT '}  {' '.join(ops)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
