"""Number formats: parsing, derived quantities, range rules and reference-quantizer properties."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ristretto_onnx.errors import FormatError
from ristretto_onnx.formats import Fixed, FormatInfo, Minifloat, Pow2, parse_format, quantize
from ristretto_onnx.range_rules import dfp_frac_bits, integer_bits, minifloat_exp_bits


@pytest.mark.parametrize("text", ["fixed:8:4", "fixed:16:-3", "fixed:4:12", "minifloat:8:4",
                                  "minifloat:5:4", "minifloat:16:5", "pow2:-8:-1", "pow2:0:0"])
def test_string_form_round_trips(text):
    assert str(parse_format(text)) == text
    assert parse_format(parse_format(text)) == parse_format(text)


@pytest.mark.parametrize("text, message", [
    ("fixed:1:0", "2 to 32 bits"),
    ("fixed:33:0", "2 to 32 bits"),
    ("fixed:8:200", "exceeds float32"),
    ("fixed:8:-130", "exceeds float32"),
    ("minifloat:12:8", "exceeds float32"),
    ("minifloat:4:4", "no room for the sign bit"),
    ("minifloat:8:0", "at least 1 exponent bit"),
    ("minifloat:32:2", "exceed float32's 23"),
    ("pow2:-1:-8", "EMIN must not exceed EMAX"),
    ("pow2:-130:0", "float32"),
    ("float:8:4", "unknown format kind"),
    ("fixed:8", "cannot parse"),
    ("fixed:a:b", "integers"),
])
def test_nonsense_is_rejected_with_a_clear_message(text, message):
    with pytest.raises(FormatError, match=message):
        parse_format(text)


def test_derived_quantities_match_the_thesis():
    q44 = Fixed(8, 4)  # the thesis's Q4.4 (LeNet, table 4.1)
    assert (q44.int_bits, q44.step, q44.max_value, q44.min_value) == (4, 0.0625, 7.9375, -8.0)
    mf = Minifloat(16, 5)  # fig. 6.1: 5 exponent bits, 10 mantissa bits
    assert (mf.mant_bits, mf.bias, mf.emin, mf.emax) == (10, 15, -14, 16)
    assert mf.max_value == (2 - 2**-10) * 2**16
    p = Pow2(-8, -1)  # ch. 7: the 4-bit multiplier-free weights
    assert (p.bits, p.max_value, p.smallest_positive) == (4, 0.5, 2**-8)
    assert FormatInfo.of("fixed:8:4").levels == 256


def test_dfp_range_rule_avoids_saturation_and_outputs_get_one_more_fraction_bit():
    assert integer_bits(0.9) == 1  # only the sign bit: values in [-1, 1)
    assert integer_bits(3.0) == 3  # [-4, 4)
    assert integer_bits(4.0) == 3
    assert integer_bits(0.1) == -2  # F = B + 2 for tiny weights
    assert dfp_frac_bits(3.0, 8) == 5
    assert dfp_frac_bits(3.0, 8, layer_output=True) == 6
    for m in [0.01, 0.3, 1.0, 2.5, 100.0, 3000.0]:
        fmt = Fixed(8, dfp_frac_bits(m, 8))
        assert fmt.max_value >= m * (1 - 2**-7) and fmt.max_value / 2 < m


def test_minifloat_exponent_rule_eq_6_2():
    # Enough exponent bits that max_abs does not saturate (infinite mantissa assumed).
    for m, e in [(1.0, 1), (4.0, 1), (5.0, 2), (64.0, 4), (255.0, 4), (2.0**17, 5), (1e30, 8)]:
        assert minifloat_exp_bits(m) == e, m
        emax = 2 ** (e - 1)
        assert 2.0 ** (emax + 1) >= m  # saturation at most at the exact power of two


def test_fixed_examples():
    x = np.array([0.03125, 0.09375, -0.03125, 7.97, -8.5, 100.0, -0.0], np.float32)
    # 0.5 and 1.5 LSB ties go to even; saturation at both ends; -0 stays -0
    np.testing.assert_array_equal(quantize(x, "fixed:8:4"), [0.0, 0.125, -0.0, 7.9375, -8.0, 7.9375, -0.0])
    assert np.signbit(quantize(x, "fixed:8:4")[2])


def test_minifloat_examples():
    fmt = Minifloat(8, 4)  # M = 3, emin = -6, emax = 8, max = 480
    x = np.array([1.0625, 1.1875, 1000.0, -1000.0, 2.0**-6, 2.0**-7, 0.0156, -2.0**-8], np.float32)
    # 1 + 1/16 is a tie between 1 and 1.125 (even mantissa 1.000); 1 + 3/16 rounds to 1.25 (even)
    np.testing.assert_array_equal(quantize(x, fmt),
                                  [1.0, 1.25, 480.0, -480.0, 2.0**-6, 0.0, 2.0**-6, -0.0])


def test_pow2_examples():
    x = np.array([0.3, 0.35, 0.36, -0.1, 1e-9, 5.0, 0.0, -0.0], np.float32)
    # threshold between 2^-2 and 2^-1 is 2^-1.5 = 0.3536 (nearest in the log domain)
    np.testing.assert_array_equal(quantize(x, "pow2:-8:-1"),
                                  [0.25, 0.25, 0.5, -0.125, 2.0**-8, 0.5, 0.0, -0.0])


@pytest.mark.parametrize("fmt", ["fixed:8:4", "minifloat:8:4", "pow2:-8:-1"])
def test_nan_propagates_and_infinities_saturate(fmt):
    f = parse_format(fmt)
    q = quantize(np.array([np.nan, np.inf, -np.inf], np.float32), f)
    assert np.isnan(q[0]) and q[1] == np.float32(f.max_value) and q[2] == np.float32(f.min_value)


formats = st.one_of(
    st.builds(lambda b, f: f"fixed:{b}:{f}", st.integers(2, 16), st.integers(-4, 20)),
    st.integers(3, 16).flatmap(lambda b: st.builds(lambda e: f"minifloat:{b}:{e}", st.integers(1, min(7, b - 1)))),
    st.builds(lambda lo, w: f"pow2:{lo}:{lo + w}", st.integers(-20, 5), st.integers(0, 10)),
)
values = hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(width=32, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(formats, values)
def test_quantization_is_idempotent_monotone_and_bounded(fmt, x):
    f = parse_format(fmt)
    q = quantize(x, f)
    np.testing.assert_array_equal(quantize(q, f), q)
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(q[order].astype(np.float64)) >= 0)
    assert np.all((q >= f.min_value) & (q <= f.max_value))


@settings(max_examples=100, deadline=None)
@given(st.builds(lambda b, f: Fixed(b, f), st.integers(2, 16), st.integers(-4, 20)), values)
def test_fixed_error_is_at_most_half_a_step_inside_the_range(f, x):
    q = quantize(x, f).astype(np.float64)
    inside = (x >= f.min_value) & (x <= f.max_value)
    assert np.all(np.abs(q - x)[inside] <= f.step / 2)
    assert np.all(np.mod(q / f.step, 1) == 0)


def test_stochastic_rounding_is_unbiased_and_stays_on_neighbours():
    x = np.full(200_000, 0.3, np.float32)  # between 0.25 and 0.375 in fixed:8:3
    q = quantize(x, "fixed:8:3", rounding="stochastic", seed=1)
    assert set(np.unique(q)) == {0.25, 0.375}
    assert math.isclose(q.mean(), 0.3, abs_tol=1e-3)
    np.testing.assert_array_equal(q, quantize(x, "fixed:8:3", rounding="stochastic", seed=1))
    mf = quantize(np.full(100_000, 1.1, np.float32), "minifloat:8:4", rounding="stochastic", seed=2)
    assert set(np.unique(mf)) == {1.0, 1.125} and math.isclose(mf.mean(), 1.1, abs_tol=2e-3)
    p = quantize(np.full(100_000, 0.3, np.float32), "pow2:-8:-1", rounding="stochastic", seed=3)
    assert set(np.unique(p)) == {0.25, 0.5} and math.isclose(p.mean(), 0.3, abs_tol=3e-3)
