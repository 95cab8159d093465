"""The one synthetic-model builder of the test suite: small graphs of the patterns real models
contain, built with onnx.helper and seeded, so every test can compare bit for bit.

* pass patterns (:func:`conv_relu_conv`, :func:`residual_block`, :func:`inception` ...): input
  ``x`` (float32, dynamic batch ``N``), output ``y``, IR 8;
* :func:`residual_cnn` and :func:`annotate`: a small CNN for the runtime tests, with its
  QuantizeSim nodes; :func:`mobilenet_like`: a MobileNet-style network whose folded weights need
  per-channel formats (both in :mod:`tests.nets`);
* :func:`quantizer_model`: QuantizeSim nodes only, for the op tests (:mod:`tests.quantizer_models`).

Every test imports them from here.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.nets import (  # noqa: F401  (the suite's one entry point)
    LAYERS, annotate, classifier_data, images, labelled_inputs, mobilenet_like, random_inputs, residual_cnn,
)
from tests.quantizer_models import literal_model, quantizer_model, run_quantizers, same_bits  # noqa: F401

RNG_SEED = 0

def rng(seed: int = RNG_SEED) -> np.random.Generator:
    return np.random.default_rng(seed)


def init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def weights(shape, seed: int, scale: float = 0.3) -> np.ndarray:
    return (rng(seed).standard_normal(shape) * scale).astype(np.float32)


def model(nodes, inits, *, x_shape=("N", 3, 8, 8), y_shape=None, opset: int = 17,
          inputs=None, outputs=None, ir_version: int = 8) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "synth",
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape or [])],
        initializer=inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    if outputs is None and y_shape is None:  # take the output shape from shape inference
        del m.graph.output[:]
        inferred = onnx.shape_inference.infer_shapes(m)
        vi = next(v for v in inferred.graph.value_info if v.name == "y")
        m.graph.output.append(vi)
    return m


def conv_relu_conv(opset: int = 17, bias: bool = True) -> onnx.ModelProto:
    """x -> Conv(3->4, 3x3, pad 1) -> Relu -> Conv(4->2, 1x1) -> y."""
    inits = [init("w1", weights((4, 3, 3, 3), 1)), init("w2", weights((2, 4, 1, 1), 2))]
    c1 = ["x", "w1"]
    c2 = ["r1", "w2"]
    if bias:
        inits += [init("b1", weights((4,), 3, 0.1)), init("b2", weights((2,), 4, 0.1))]
        c1.append("b1")
        c2.append("b2")
    nodes = [
        helper.make_node("Conv", c1, ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", c2, ["y"], name="conv2"),
    ]
    return model(nodes, inits, opset=opset)


def conv_conv() -> onnx.ModelProto:
    """x -> Conv -> Conv -> y: the second layer's input is the first layer's output."""
    inits = [init("w1", weights((4, 3, 3, 3), 1)), init("w2", weights((2, 4, 1, 1), 2))]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["y"], name="conv2"),
    ]
    return model(nodes, inits)


def bn_params(prefix: str, c: int, seed: int) -> list[onnx.TensorProto]:
    r = rng(seed)
    return [
        init(f"{prefix}.gamma", (r.uniform(0.5, 2.0, c)).astype(np.float32)),
        init(f"{prefix}.beta", (r.standard_normal(c) * 0.2).astype(np.float32)),
        init(f"{prefix}.mean", (r.standard_normal(c) * 0.3).astype(np.float32)),
        init(f"{prefix}.var", (r.uniform(0.2, 3.0, c)).astype(np.float32)),
    ]


def bn(prefix: str, x: str, y: str, eps: float = 1e-5) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}.{p}" for p in ("gamma", "beta", "mean", "var")],
                            [y], name=f"{prefix}", epsilon=eps)


def residual_block() -> onnx.ModelProto:
    """ResNet basic block: x -> Conv -> BN -> Relu -> Conv -> BN -> Add(x) -> Relu -> y."""
    c = 3
    inits = [init("w1", weights((c, c, 3, 3), 1)), init("w2", weights((c, c, 3, 3), 2))]
    inits += bn_params("bn1", c, 5) + bn_params("bn2", c, 6)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="/block/conv1/Conv", pads=[1, 1, 1, 1]),
        bn("bn1", "c1", "b1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="/block/conv2/Conv", pads=[1, 1, 1, 1]),
        bn("bn2", "c2", "b2"),
        helper.make_node("Add", ["b2", "x"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["y"], name="relu2"),
    ]
    return model(nodes, inits)


def bn_not_foldable() -> onnx.ModelProto:
    """Conv output read by a BN *and* a Relu: folding would lose the unnormalized output."""
    inits = [init("w1", weights((3, 3, 3, 3), 1))] + bn_params("bn1", 3, 5)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        bn("bn1", "c1", "b1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Add", ["b1", "r1"], ["y"], name="add"),
    ]
    return model(nodes, inits)


def inception() -> onnx.ModelProto:
    """SqueezeNet fire module: squeeze Conv -> (1x1 Conv, 3x3 Conv) -> Concat -> Conv -> y.

    The squeeze output feeds two layers (a shared layer input).
    """
    inits = [init("ws", weights((2, 3, 1, 1), 1)), init("we1", weights((4, 2, 1, 1), 2)),
             init("we3", weights((4, 2, 3, 3), 3)), init("wo", weights((2, 8, 1, 1), 4))]
    nodes = [
        helper.make_node("Conv", ["x", "ws"], ["s"], name="squeeze"),
        helper.make_node("Relu", ["s"], ["sr"], name="squeeze_relu"),
        helper.make_node("Conv", ["sr", "we1"], ["e1"], name="expand1x1"),
        helper.make_node("Conv", ["sr", "we3"], ["e3"], name="expand3x3", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["e1", "e3"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "wo"], ["y"], name="out"),
    ]
    return model(nodes, inits)


def depthwise_grouped() -> onnx.ModelProto:
    """Depthwise Conv (group = channels) then grouped Conv (group 2), both with BN."""
    inits = [init("wd", weights((4, 1, 3, 3), 1)), init("wg", weights((4, 2, 1, 1), 2))]
    inits += bn_params("bnd", 4, 7) + bn_params("bng", 4, 8)
    nodes = [
        helper.make_node("Conv", ["x", "wd"], ["d"], name="depthwise", group=4, pads=[1, 1, 1, 1]),
        bn("bnd", "d", "db"),
        helper.make_node("Conv", ["db", "wg"], ["g"], name="grouped", group=2),
        bn("bng", "g", "y"),
    ]
    return model(nodes, inits, x_shape=("N", 4, 6, 6))


def option_a_shortcut() -> onnx.ModelProto:
    """A strided Conv whose shortcut is the option-A Slice (step 2) + channel Pad, then Add.

    The pads are computed at run time from a Constant through Cast, as the PyTorch exporter does.
    """
    inits = [init("w", weights((6, 3, 3, 3), 1)),
             init("starts", np.array([0, 0], np.int64)), init("ends", np.array([2**31, 2**31], np.int64)),
             init("axes", np.array([2, 3], np.int64)), init("steps", np.array([2, 2], np.int64))]
    pads_value = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 3, 0, 0], np.int32), "pads_c")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["sl"], name="slice"),
        helper.make_node("Constant", [], ["pads32"], name="pads_const", value=pads_value),
        helper.make_node("Cast", ["pads32"], ["pads"], name="pads_cast", to=TensorProto.INT64),
        helper.make_node("Pad", ["sl", "pads"], ["pad"], name="pad"),
        helper.make_node("Add", ["c", "pad"], ["y"], name="add"),
    ]
    return model(nodes, inits)


def flatten_gemm(reshape: bool = False) -> onnx.ModelProto:
    """Conv -> MaxPool -> Flatten (or Reshape) -> Gemm(transB) -> Relu -> Gemm -> y (LeNet)."""
    inits = [init("wc", weights((2, 3, 3, 3), 1)), init("bc", weights((2,), 2, 0.1)),
             init("w1", weights((5, 18), 3)), init("b1", weights((5,), 4, 0.1)),
             init("w2", weights((5, 4), 5)), init("b2", weights((4,), 6, 0.1)),
             init("shape", np.array([-1, 18], np.int64))]
    flat = (helper.make_node("Reshape", ["p", "shape"], ["f"], name="reshape") if reshape
            else helper.make_node("Flatten", ["p"], ["f"], name="flatten"))
    nodes = [
        helper.make_node("Conv", ["x", "wc", "bc"], ["c"], name="conv"),
        helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        flat,
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"], name="fc2"),
    ]
    return model(nodes, inits)


def matmul_add() -> onnx.ModelProto:
    """x (N, 6) -> MatMul W (6, 4) -> Add b (4,) -> Relu -> MatMul (4, 3) -> Add (1, 3) -> y."""
    inits = [init("w1", weights((6, 4), 1)), init("b1", weights((4,), 2, 0.1)),
             init("w2", weights((4, 3), 3)), init("b2", weights((1, 3), 4, 0.1))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
        helper.make_node("Relu", ["a1"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["m2"], name="fc2"),
        helper.make_node("Add", ["b2", "m2"], ["y"], name="fc2_bias"),
    ]
    return model(nodes, inits, x_shape=("N", 6))


def shared_weights() -> onnx.ModelProto:
    """Two MatMuls with the same weight initializer (tied weights), then Add."""
    inits = [init("w", weights((6, 6), 1))]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m1"], name="fc1"),
        helper.make_node("Relu", ["m1"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "w"], ["m2"], name="fc2"),
        helper.make_node("Add", ["m1", "m2"], ["y"], name="add"),
    ]
    return model(nodes, inits, x_shape=("N", 6))


def weights_as_inputs() -> onnx.ModelProto:
    """Weights listed as graph inputs with initializer defaults, plus a true runtime weight input.

    ``fc1`` uses ``w1`` (input with a default: a weight); ``fc2`` multiplies by ``wr``, a runtime
    input without default (not a layer).
    """
    w1 = weights((6, 4), 1)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6]),
              helper.make_tensor_value_info("w1", TensorProto.FLOAT, [6, 4]),
              helper.make_tensor_value_info("wr", TensorProto.FLOAT, [4, 3])]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
        helper.make_node("MatMul", ["m1", "wr"], ["y"], name="fc2"),
    ]
    return model(nodes, [init("w1", w1)], inputs=inputs)


def constant_weights() -> onnx.ModelProto:
    """Weights through a Constant node, a Transpose of an initializer, and a Cast from float16."""
    wc = weights((4, 3, 3, 3), 1)
    wt = weights((4, 4 * 36), 2)  # (out, in): transposed to (in, out) for the MatMul
    w16 = weights((4, 3), 3).astype(np.float16)
    nodes = [
        helper.make_node("Constant", [], ["wc"], name="wc_const", value=numpy_helper.from_array(wc, "wc")),
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Transpose", ["wt"], ["wtT"], name="wt_transpose", perm=[1, 0]),
        helper.make_node("MatMul", ["f", "wtT"], ["h"], name="fc1"),
        helper.make_node("Cast", ["w16"], ["w16f"], name="w16_cast", to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["h", "w16f"], ["y"], name="fc2"),
    ]
    return model(nodes, [init("wt", wt), init("w16", w16)], x_shape=("N", 3, 12, 12))


def conv_transpose() -> onnx.ModelProto:
    """ConvTranspose (3 -> 2 channels, stride 2) with bias."""
    inits = [init("w", weights((3, 2, 2, 2), 1)), init("b", weights((2,), 2, 0.1))]
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="deconv", strides=[2, 2])]
    return model(nodes, inits)


def attention_matmul() -> onnx.ModelProto:
    """A MatMul of two runtime tensors (x @ x^T): no weights, not a layer."""
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "xt"], ["y"], name="scores")]
    return model(nodes, [], x_shape=(5, 6))


def sample_input(m: onnx.ModelProto, batch: int = 2, seed: int = 10, scale: float = 1.0) -> np.ndarray:
    """Random data for the model's ``x`` (the dynamic batch axis set to ``batch``)."""
    inp = next(i for i in m.graph.input if i.name == "x")
    dims = [d.dim_value if d.HasField("dim_value") else batch for d in inp.type.tensor_type.shape.dim]
    return (rng(seed).standard_normal(dims) * scale).astype(np.float32)


def depthwise_pointwise(channels: int = 8, seed: int = 3) -> onnx.ModelProto:
    """x -> depthwise Conv 3x3 (channel ranges 1 .. 2^-9) -> Relu -> pointwise Conv 1x1 -> y.

    The depthwise weights need one fractional length per channel (with one per layer the small
    channels round to zero); every pointwise weight is +-0.5 or +-0.25 (its channels alike, exact
    on any dfp grid of 3 bits or more), so per channel buys it nothing.
    """
    r = rng(seed)
    c = np.arange(channels, dtype=np.float64)
    scales = (2.0 ** -c * 0.75 ** (c % 3))[:, None, None, None]
    wd = (r.standard_normal((channels, 1, 3, 3)) * scales).astype(np.float32)
    wp = (r.choice([-0.5, -0.25, 0.25, 0.5], size=(channels, channels, 1, 1))).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "wd"], ["d"], name="dw", group=channels, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wp"], ["y"], name="pw"),
    ]
    return model(nodes, [init("wd", wd), init("wp", wp)], x_shape=("N", channels, 8, 8))
