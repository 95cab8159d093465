"""Per-channel formats: one fractional length (or exponent window) per slice along an axis."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ristretto_onnx.errors import FormatError, RistrettoError
from ristretto_onnx.formats import PerChannel, parse_format, quantize
from ristretto_onnx.range_rules import dfp_channel_format
from ristretto_onnx.ops import attach_functions, make_quantize_node, node_format
from ristretto_onnx.runtime.session import create_session

from tests.builders import same_bits


def run_one(fmt, x: np.ndarray, *, as_initializer: bool = False, rounding="nearest_even") -> np.ndarray:
    fmt = parse_format(fmt)
    node = make_quantize_node("x", "y", fmt, rank=x.ndim, rounding=rounding)
    dims = [f"d{i}" for i in range(x.ndim)]
    inputs = [] if as_initializer else [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)]
    inits = [numpy_helper.from_array(x, "x")] if as_initializer else []
    g = helper.make_graph([node], "pc", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)], inits)
    m = attach_functions(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    onnx.checker.check_model(m)
    return create_session(m, kernels=False).run(None, {} if as_initializer else {"x": x})[0]  # bodies


def weights(shape, seed=0, spread=8):
    rng = np.random.default_rng(seed)
    scale = 2.0 ** rng.uniform(-spread, 0, shape[0])
    return (rng.standard_normal(shape) * scale.reshape((-1,) + (1,) * (len(shape) - 1))).astype(np.float32)


def test_string_form_and_parsing():
    f = parse_format("fixed:8:5,7,6@0")
    assert isinstance(f, PerChannel) and f.channels == 3 and f.bits == 8 and str(f) == "fixed:8:5,7,6@0"
    assert parse_format("fixed:8:5,7,6", axis=-4) == PerChannel(f.formats, -4)
    assert str(parse_format("pow2:-9:-2,-1@1")) == "pow2:-9,-9:-2,-1@1"
    with pytest.raises(FormatError, match="needs an axis"):
        parse_format("fixed:8:5,7")
    with pytest.raises(FormatError, match="minifloat has no per-channel form"):
        parse_format("minifloat:8:4,3@0")
    with pytest.raises(FormatError, match="differ in length"):
        parse_format("pow2:-9,-8,-7:-2,-1@0")


@pytest.mark.parametrize("shape, axis", [((16, 8, 3, 3), 0), ((16, 1, 3, 3), 0), ((10, 32), 0), ((32, 10), 1)])
def test_dfp_per_channel_is_bit_exact_in_onnxruntime(shape, axis):
    w = weights(shape if axis == 0 else shape[::-1]).T.copy() if axis == 1 else weights(shape)
    maxes = np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(axis=1)
    fmt = dfp_channel_format(maxes, 8, axis=axis)
    ref = quantize(w, fmt)
    for c in range(w.shape[axis]):  # each channel quantized with its own scalar format
        np.testing.assert_array_equal(np.take(ref, c, axis), quantize(np.take(w, c, axis), fmt.formats[c]))
    assert same_bits(run_one(fmt, w), ref).all()
    assert same_bits(run_one(fmt, w, as_initializer=True), ref).all()


def test_per_channel_pow2_windows_are_bit_exact():
    w = weights((12, 4, 3, 3), seed=3, spread=10)
    emax = np.ceil(np.log2(np.abs(w).reshape(12, -1).max(axis=1))).astype(int)
    fmt = PerChannel(tuple(parse_format(f"pow2:{e - 7}:{e}") for e in emax), axis=0)
    x = np.concatenate([w.ravel(), np.zeros(12 * 4 * 9 - w.size, np.float32)]).reshape(w.shape)
    assert same_bits(run_one(fmt, x), quantize(x, fmt)).all()


def test_per_channel_beats_per_tensor_on_channels_spanning_2_to_the_8():
    w = weights((32, 16, 3, 3), seed=5, spread=8)
    per_tensor = quantize(w, parse_format(f"fixed:8:{8 - int(np.ceil(np.log2(np.abs(w).max()))) - 1}"))
    maxes = np.abs(w).reshape(32, -1).max(axis=1)
    per_channel = quantize(w, dfp_channel_format(maxes, 8))
    def rel(q):
        return np.linalg.norm((q - w).reshape(32, -1), axis=1) / np.linalg.norm(w.reshape(32, -1), axis=1)

    assert rel(per_channel).max() < 0.02 and rel(per_tensor).max() > 0.5


def test_node_stores_a_negative_axis_and_attach_normalizes_hand_written_ones():
    node = make_quantize_node("w", "wq", "fixed:8:5,6@0", rank=4)
    assert node_format(node)[0].axis == -4
    with pytest.raises(RistrettoError, match="rank is needed"):
        make_quantize_node("w", "wq", "fixed:8:5,6@0")
    w = weights((2, 3, 3, 3))
    hand = helper.make_node("QuantizeSim", ["w"], ["y"], domain="ai.ristretto", format="fixed:8:5,6", axis=0)
    g = helper.make_graph([hand], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 3, 3])],
                          [numpy_helper.from_array(w, "w")])
    m = attach_functions(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    assert node_format(m.graph.node[0])[0].axis == -4
    out = create_session(m).run(None, {})[0]
    assert same_bits(out, quantize(w, "fixed:8:5,6@0")).all()
