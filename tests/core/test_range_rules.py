"""Range rules for dynamic fixed point: max (thesis), percentile and MSE."""

import numpy as np
import pytest

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Fixed, quantize
from ristretto_onnx.range_rules import check_rule, expected_sq_error, frac_bits
from ristretto_onnx.stats import RangeStats


@pytest.fixture(scope="module")
def outlier_data():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.standard_normal(100_000), [40.0]]).astype(np.float32)


def true_mse(x, f):
    return float(np.mean((quantize(x, f).astype(np.float64) - x) ** 2))


def test_max_rule_is_eq_5_2(outlier_data):
    s = RangeStats.of(outlier_data)
    assert frac_bits(s, 8, "max") == 8 - 7  # IL(40) = ceil(log2 40) + 1 = 7
    assert frac_bits(s, 8, "max", layer_output=True) == 2


def test_histogram_error_estimate_matches_the_real_error(outlier_data):
    s = RangeStats.of(outlier_data)
    for f in range(1, 7):
        est, real = expected_sq_error(s, Fixed(8, f)), true_mse(outlier_data, Fixed(8, f))
        assert est == pytest.approx(real, rel=0.1), f


def test_mse_rule_picks_the_best_length_and_beats_max_on_outliers(outlier_data):
    s = RangeStats.of(outlier_data)
    f = frac_bits(s, 8, "mse")
    errors = {k: true_mse(outlier_data, Fixed(8, k)) for k in range(1, 6)}
    assert errors[f] == min(errors.values())
    assert errors[f] < errors[frac_bits(s, 8, "max")] / 3


def test_percentile_rule_clips_the_outlier(outlier_data):
    s = RangeStats.of(outlier_data)
    assert frac_bits(s, 8, "percentile:99.99") == 8 - 3  # p99.99 of |N(0,1)| is about 3.9
    assert frac_bits(s, 8, "percentile:100") == frac_bits(s, 8, "max")


@pytest.mark.parametrize("bad", ["minmax", "percentile", "percentile:0", "percentile:101", "mse:3"])
def test_bad_rules_are_rejected(bad):
    with pytest.raises(RistrettoError):
        check_rule(bad)


def test_compress_with_mse_rule_on_digits():
    from ristretto_onnx import zoo
    from ristretto_onnx.compress import compress

    m = zoo.resolve_model("zoo:digits-cnn")
    r = compress(str(m), zoo.model_dataset("digits-cnn", "test"), calib=zoo.model_dataset("digits-cnn", "calib"),
                 scheme="dfp", tolerance=0.01, range_rule="mse")
    assert r.report.drop <= 0.01 + 1e-9 and r.report.options["range_rule"] == "mse"
