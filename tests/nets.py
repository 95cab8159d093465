"""Small networks for the runtime and per-channel tests (built with onnx.helper, seeded).

* :func:`residual_cnn` and :func:`annotate`: a small CNN for the runtime tests, with its
  QuantizeSim nodes; :func:`images` and :func:`classifier_data` feed it;
* :func:`mobilenet_like`: a MobileNet-style network whose folded weights need per-channel
  formats (dead channels whose BN variance is 0, see its docstring), with
  :func:`labelled_inputs` / :func:`random_inputs`.

The suite imports them through :mod:`tests.builders`, the one builder of the test suite.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ristretto_onnx.ops import attach_functions, make_quantize_node


def _f32(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


# ---- a small residual CNN for the runtime tests ----------------------------------------------

IR_VERSION = 10



def residual_cnn(seed: int = 0, channels: int = 16, classes: int = 10) -> onnx.ModelProto:
    """input (N,3,8,8) -> conv -> relu -> conv -> relu -> conv -> add(residual) -> relu -> pool -> gemm.

    16 channels so onnxruntime uses its NCHWc kernels (the layout pass has work to do).
    """
    rng = np.random.default_rng(seed)
    c = channels
    inits = [
        _f32("w1", rng.normal(0, 0.4, (c, 3, 3, 3))), _f32("b1", rng.normal(0, 0.1, c)),
        _f32("w2", rng.normal(0, 0.15, (c, c, 3, 3))), _f32("b2", rng.normal(0, 0.1, c)),
        _f32("w3", rng.normal(0, 0.15, (c, c, 3, 3))),
        _f32("wf", rng.normal(0, 0.3, (classes, c))), _f32("bf", rng.normal(0, 0.1, classes)),
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


# ---- a MobileNet-style network for the per-channel tests -------------------------------------

EPS = 1e-5



def _measured_bn(prefix: str, x: str, y: str, c: int, rng, dead=None) -> tuple[list, list]:
    """BN statistics as training measured them; channels ``dead`` at the input saw only zeros."""
    gamma = rng.uniform(0.8, 1.2, c)
    beta = rng.uniform(0.0, 0.5, c)
    mean = rng.normal(0.0, 0.1, c)
    var = rng.uniform(0.8, 1.2, c)
    if dead is not None:
        mean, var = np.where(dead, 0.0, mean), np.where(dead, 0.0, var)
    inits = [_f32(f"{prefix}.{k}", v) for k, v in
             (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var))]
    node = helper.make_node("BatchNormalization", [x, f"{prefix}.gamma", f"{prefix}.beta", f"{prefix}.mean",
                                                   f"{prefix}.var"], [y], name=f"/{prefix}/bn/BatchNormalization", epsilon=EPS)
    return [node], inits


def _relu6(x: str, y: str, name: str) -> onnx.NodeProto:
    return helper.make_node("Clip", [x, "zero", "six"], [y], name=f"/{name}/Clip")


def mobilenet_like(*, channels: int = 32, blocks: int = 3, classes: int = 10, size: int = 16,
                   dead_every: int = 8, seed: int = 0) -> onnx.ModelProto:
    """A synthetic MobileNet-style network whose folded weights need per-channel formats.

    Stem conv 3x3 -> blocks of (depthwise 3x3 stride 2 -> BN -> ReLU6, pointwise 1x1 -> BN -> ReLU6) ->
    global average pool -> Gemm classifier. ReLU6 is ``Clip(0, 6)``; every BN is folded by the
    pipeline.

    Why per-tensor formats fail on it, as on real MobileNets: some pointwise output channels are
    *dead* (zero weights, negative bias: ReLU6 keeps them at 0), so the BN after the next depthwise
    conv measured a running variance of 0 there, and folding divides those channels' weights by
    ``sqrt(0 + eps)``: their weights become about 2^8 larger than the live channels'. A per-tensor
    8-bit format sized for them rounds every live weight to a step or two; a per-channel one gives
    each channel its own fractional length. Activations stay in a normal range (dead channels only
    carry their bias), so per-tensor activation formats are fine. ``dead_every``: one dead
    channel in that many.
    """
    rng = np.random.default_rng(seed)
    c = channels
    nodes: list = []
    inits = [_f32("zero", 0.0), _f32("six", 6.0)]
    dead = np.zeros(c, bool)
    dead[::dead_every] = True

    def conv(name: str, x: str, w: np.ndarray, group: int = 1, pads: int = 0, stride: int = 1) -> str:
        inits.append(_f32(f"{name}.weight", w))
        nodes.append(helper.make_node("Conv", [x, f"{name}.weight"], [f"{name}.out"], name=f"/{name}/Conv",
                                      group=group, pads=[pads] * 4, strides=[stride] * 2,
                                      kernel_shape=list(w.shape[2:])))
        return f"{name}.out"

    w = rng.standard_normal((c, 3, 3, 3)) * np.sqrt(2.0 / 27)
    h = conv("stem", "x", w, pads=1)
    bn_nodes, bn_inits = _measured_bn("stem", h, "stem.bn", c, rng)
    nodes += bn_nodes + [_relu6("stem.bn", "stem.act", "stem/relu6")]
    inits += bn_inits
    h = "stem.act"
    for b in range(blocks):
        # depthwise: channels that are dead at the input have running variance 0
        w = rng.standard_normal((c, 1, 3, 3)) * np.sqrt(2.0 / 9)
        h = conv(f"b{b}.dw", h, w, group=c, pads=1, stride=2)
        bn_nodes, bn_inits = _measured_bn(f"b{b}.dw", h, f"b{b}.dw.bn", c, rng, dead if b > 0 else None)
        nodes += bn_nodes + [_relu6(f"b{b}.dw.bn", f"b{b}.dw.act", f"b{b}.dw/relu6")]
        inits += bn_inits
        # pointwise: dead output channels have zero weights (and a negative bias after BN)
        w = rng.standard_normal((c, c, 1, 1)) * np.sqrt(2.0 / c)
        w[dead] = 0.0
        h = conv(f"b{b}.pw", f"b{b}.dw.act", w)
        bn_nodes, bn_inits = _measured_bn(f"b{b}.pw", h, f"b{b}.pw.bn", c, rng)
        beta = numpy_helper.to_array(bn_inits[1]).copy()
        beta[dead] = -1.0
        bn_inits[1] = _f32(f"b{b}.pw.beta", beta)
        nodes += bn_nodes + [_relu6(f"b{b}.pw.bn", f"b{b}.pw.act", f"b{b}.pw/relu6")]
        inits += bn_inits
        h = f"b{b}.pw.act"
    nodes.append(helper.make_node("GlobalAveragePool", [h], ["pool"], name="/pool/GlobalAveragePool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="/flatten/Flatten"))
    # A nearest-class-mean head on the pooled features of the input classes (see random_inputs),
    # as a trained classifier would be: logit_k = m_k . f - |m_k|^2 / 2, with centered means.
    x, labels = labelled_inputs(1024, size, classes, seed=seed + 100)
    features = _run(_mobilenet_graph(nodes, inits, "flat", c, size), x).astype(np.float64)
    mu = features.mean(axis=0)
    means = np.stack([features[labels == k].mean(axis=0) for k in range(classes)]) - mu
    fc = means / np.linalg.norm(means, axis=1).mean()
    bias = -fc @ mu - 0.5 * (fc * means).sum(axis=1)
    inits += [_f32("fc.weight", fc), _f32("fc.bias", bias)]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], name="/fc/Gemm", transB=1))
    model = _mobilenet_graph(nodes, inits, "y", classes, size)
    onnx.checker.check_model(model)
    return model


def _mobilenet_graph(nodes, inits, output: str, width: int, size: int) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "mobilenet_like",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", width])], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def labelled_inputs(n: int = 2000, size: int = 16, classes: int = 10, *, noise: float = 0.2,
                    seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Random images of ``classes`` fixed random prototypes plus Gaussian noise, and their class.

    The prototypes are the same for every seed (the network's head is fit to them); ``seed``
    draws the classes and the noise.
    """
    protos = np.random.default_rng(12345).standard_normal((classes, 3, size, size))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = protos[labels] + noise * rng.standard_normal((n, 3, size, size))
    return x.astype(np.float32), labels


def random_inputs(n: int = 2000, size: int = 16, seed: int = 1) -> np.ndarray:
    """The images of :func:`labelled_inputs` without their classes."""
    return labelled_inputs(n, size, seed=seed)[0]
