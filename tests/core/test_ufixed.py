"""Unsigned fixed point (``ufixed:B:F``): format, QuantizeSim body and lowering, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from ristretto_onnx.errors import FormatError
from ristretto_onnx.formats import FormatInfo, UFixed, parse_format, quantize
from ristretto_onnx.runtime.lowering import lower
from ristretto_onnx.runtime.session import create_session

from tests.builders import quantizer_model, run_quantizers, same_bits
from .test_ops import SPECIALS, assert_bit_exact, boundary_values, random_bit_patterns

UFIXED = [f"ufixed:{b}:{f}" for b in (1, 2, 3, 4, 6, 7, 8, 9, 12, 16) for f in (-3, 0, 2, b, b + 4)]
UFIXED += ["ufixed:31:0", "ufixed:24:126", "ufixed:8:126", "ufixed:8:-119"]


def test_string_form_and_values():
    f = parse_format("ufixed:8:4")
    assert f == UFixed(8, 4) and str(f) == "ufixed:8:4"
    assert (f.min_value, f.max_value, f.step) == (0.0, 255 / 16, 1 / 16)
    assert FormatInfo.of("ufixed:4:0").levels == 16
    x = np.array([-3.0, -0.01, -0.0, 0.0, 0.03125, 0.09375, 1.0, 15.9, 100.0], np.float32)
    q = quantize(x, "ufixed:8:4")
    assert q.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 0.125, 1.0, 15.875, 15.9375]
    assert not np.signbit(q).any()  # negatives saturate to +0


def test_equals_one_more_signed_bit_on_non_negative_values():
    x = np.abs(random_bit_patterns(50_000, 3))
    x = x[np.isfinite(x)]
    for b, f in ((4, 2), (8, 5), (6, -1)):
        assert np.array_equal(quantize(x, f"ufixed:{b}:{f}"), quantize(x, f"fixed:{b + 1}:{f}"))


@pytest.mark.parametrize("text", ["ufixed:0:0", "ufixed:32:0", "ufixed:8:127", "ufixed:8:-120", "ufixed:8:1,2@0"])
def test_bad_formats_are_rejected(text):
    with pytest.raises(FormatError):
        parse_format(text)


def test_quantize_sim_body_is_bit_exact():
    x = np.concatenate([random_bit_patterns(20_000, 4), SPECIALS] + [boundary_values(f) for f in UFIXED])
    for fmt, got in zip(UFIXED, run_quantizers(UFIXED, x)):
        assert_bit_exact(fmt, got, x)


def test_stochastic_rounding_body_is_unbiased():
    (got,) = run_quantizers(["ufixed:8:3"], np.full(100_000, 0.3, np.float32), rounding="stochastic")
    assert set(np.unique(got)) == {0.25, 0.375} and abs(got.mean() - 0.3) < 2e-3


@pytest.mark.parametrize("fmt", ["ufixed:8:4", "ufixed:4:2", "ufixed:8:-3", "ufixed:1:0", "ufixed:12:6"])
def test_lowering_is_bit_exact(fmt):
    """uint8 QuantizeLinear/DequantizeLinear (B <= 8) or the float chain equals the body."""
    model = quantizer_model([fmt])
    rng = np.random.default_rng(5)
    x = np.concatenate([(rng.standard_normal(20_000) * 8).astype(np.float32), boundary_values(fmt),
                        np.array([0.0, -0.0, 1e-40, -1e-40], np.float32)])
    want = create_session(model).run(None, {"x": x})[0]
    for parametric in (False, True):
        low = lower(model, parametric=parametric)
        ops = {n.op_type for n in low.model.graph.node}
        assert ("QuantizeLinear" in ops) == (parse_format(fmt).bits <= 8)
        assert "QuantizeSim" not in ops
        got = create_session(low.model).run(None, {"x": x, **low.feeds})[0]
        assert same_bits(got, want).all(), fmt
        assert same_bits(got, quantize(x, fmt)).all()


def _near_zero_values(fmt: str) -> np.ndarray:
    """Eighths of a step in [-4, 4] steps (the body's clip bound step/4, the tie step/2, ...),
    their float32 neighbours, both zeros and the smallest subnormals."""
    step = parse_format(fmt).step
    v = (np.arange(-32, 33) * step / 8).astype(np.float32)
    v = np.concatenate([v, np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(-np.inf))])
    return np.concatenate([v, np.array([0.0, -0.0, 1e-45, -1e-45, np.nan, -np.nan], np.float32)])


def test_body_clips_at_a_quarter_step_and_gives_plus_zero_below_one_half():
    """The nearest-even body clips to [1/4, 2^B - 1] before Round (ops._ufixed_body): every
    value below half a step, -0 and the negatives included, gives +0, as the reference does."""
    fmts = ["ufixed:8:4", "ufixed:1:0", "ufixed:8:-3", "ufixed:24:126", "ufixed:8:-119"]
    x = np.concatenate([_near_zero_values(f) for f in fmts])
    for fmt, got in zip(fmts, run_quantizers(fmts, x)):
        assert_bit_exact(fmt, got, x)
        assert not np.signbit(got[~np.isnan(got)]).any(), fmt
    (got,) = run_quantizers(["ufixed:8:4"], np.array([-0.0, -1e-45, 1 / 64, 1 / 32, 3 / 64], np.float32))
    assert got.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0625]  # 1/64 = step/4 is the clip bound


def _conv_ufixed(fmt: str | None):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    w = numpy_helper.from_array((rng.standard_normal((16, 8, 3, 3)) * 0.3).astype(np.float32), "w")
    b = numpy_helper.from_array((rng.standard_normal(16) * 0.5).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    if fmt is not None:
        from ristretto_onnx.ops import attach_functions, make_quantize_node

        nodes.append(make_quantize_node("c", "y", fmt))
    out = "y" if fmt is not None else "c"
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8, 12, 12])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return attach_functions(m) if fmt is not None else m


@pytest.mark.parametrize("fmt", ["ufixed:8:4", "ufixed:6:-1"])
def test_body_fuses_into_the_convolution_and_equals_numpy(fmt, tmp_path):
    """In a stock session the body's scale folds into the convolution and its Clip becomes the
    convolution's activation (one Round and one Mul left, no Abs); the result equals the numpy
    reference applied to the plain convolution's output, bit for bit."""
    import onnx

    from ristretto_onnx.runtime.session import session_options

    so = session_options()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = create_session(_conv_ufixed(fmt), options=so, kernels=False)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "Clip" not in ops and "Abs" not in ops and ops.count("Round") == 1, ops
    x = np.random.default_rng(3).standard_normal((4, 8, 12, 12)).astype(np.float32)
    x[0] = 0.0  # outputs equal to the bias, some of them negative
    got = sess.run(None, {"x": x})[0]
    plain = create_session(_conv_ufixed(None), kernels=False).run(None, {"x": x})[0]
    assert (plain < 0).mean() > 0.2 and (got == 0).mean() > 0.2
    assert same_bits(got, quantize(plain, fmt)).all()
    assert not np.signbit(got).any()
