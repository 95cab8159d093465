"""Small synthetic CNNs for the runtime tests: fast to build, run and compare bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ristretto_onnx.ops import attach_functions, make_quantize_node

IR_VERSION = 10


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def residual_cnn(seed: int = 0, channels: int = 16, classes: int = 10) -> onnx.ModelProto:
    """input (N,3,8,8) -> conv -> relu -> conv -> relu -> conv -> add(residual) -> relu -> pool -> gemm.

    16 channels so onnxruntime uses its NCHWc kernels (the layout pass has work to do).
    """
    rng = np.random.default_rng(seed)
    c = channels
    inits = [
        _init("w1", rng.normal(0, 0.4, (c, 3, 3, 3))), _init("b1", rng.normal(0, 0.1, c)),
        _init("w2", rng.normal(0, 0.15, (c, c, 3, 3))), _init("b2", rng.normal(0, 0.1, c)),
        _init("w3", rng.normal(0, 0.15, (c, c, 3, 3))),
        _init("wf", rng.normal(0, 0.3, (classes, c))), _init("bf", rng.normal(0, 0.1, classes)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c3", "r1"], ["a3"], name="add3"),
        helper.make_node("Relu", ["a3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gp"], name="pool"),
        helper.make_node("Flatten", ["gp"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "residual_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


LAYERS = ("conv1", "conv2", "conv3", "fc")


def annotate(model: onnx.ModelProto, fmt: str = "fixed:8:4", weight_fmt: str = "fixed:8:6") -> onnx.ModelProto:
    """QuantizeSim on every Conv/Gemm input, weight and output, named ``<layer>/<role>``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            nodes.append(node)
            continue
        layer = node.name
        q_in = make_quantize_node(node.input[0], f"{layer}_in_q", fmt, name=f"{layer}/inputs")
        q_w = make_quantize_node(node.input[1], f"{layer}_w_q", weight_fmt, name=f"{layer}/weights")
        raw = f"{node.output[0]}__float"
        q_out = make_quantize_node(raw, node.output[0], fmt, name=f"{layer}/outputs")
        node.input[0], node.input[1], node.output[0] = q_in.output[0], q_w.output[0], raw
        nodes += [q_in, q_w, node, q_out]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return attach_functions(out)


def images(n: int = 64, seed: int = 1) -> np.ndarray:
    """Inputs with exact zeros and tiny negatives, where signed zeros show up."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1.0, (n, 3, 8, 8)).astype(np.float32)
    x[:, :, :2] = 0.0
    x[:, :, 2, :4] = -1e-3
    return x


def classifier_data(n: int = 96, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return images(n, seed), rng.integers(0, 10, n)
