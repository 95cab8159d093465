"""RangeStats: the range statistics every format rule reads (pure numpy, no runtime)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ristretto_onnx.stats import BINS_PER_OCTAVE, RangeAccumulator, RangeStats


def _values(n=20000, seed=0):
    r = np.random.default_rng(seed)
    x = (r.standard_normal(n) * np.exp2(r.integers(-12, 6, n))).astype(np.float32)
    x[:500] = 0
    return x


def test_exact_min_max_count_zeros_and_log2_histogram():
    x = _values()
    s = RangeStats.of(x)
    assert (s.count, s.zeros, s.nonfinite) == (x.size, 500, 0)
    assert (s.min, s.max) == (float(x.min()), float(x.max()))
    assert s.max_abs == float(np.abs(x).max())
    nz = np.abs(x[x != 0]).astype(np.float64)
    exps, counts = np.unique(np.floor(np.log2(nz)).astype(int), return_counts=True)
    assert s.log2_histogram() == dict(zip(exps.tolist(), counts.tolist()))


def test_percentiles_are_within_one_fine_bin():
    x = _values()
    s = RangeStats.of(x)
    for q in (50, 99, 99.9, 99.99):
        ref = np.percentile(np.abs(x), q)
        assert abs(s.percentile(q) - ref) <= ref * 2.0 / BINS_PER_OCTAVE + 1e-30
    assert s.percentile(100) == s.max_abs
    assert s.percentile(0) == 0.0


def test_streaming_equals_one_shot():
    x = _values()
    acc = RangeAccumulator()
    for chunk in np.array_split(x, 7):
        acc.update(chunk)
    a, b = acc.result(), RangeStats.of(x)
    assert a == b and np.array_equal(a.hist, b.hist)


def test_nonfinite_values_are_counted_apart_and_saturation_shares():
    x = np.array([np.nan, np.inf, -np.inf, 1.0, -3.0, 0.001, 0.0], np.float32)
    s = RangeStats.of(x)
    assert (s.nonfinite, s.min, s.max, s.zeros) == (3, -3.0, 1.0, 1)
    assert s.fraction_above(2.0) == pytest.approx(4 / 7)  # -3 and the three nonfinite
    assert s.fraction_below(0.01) == pytest.approx(1 / 7)  # 0.001 (zeros are not counted)
    empty = RangeStats.of(np.array([], np.float32))
    assert (empty.count, empty.max_abs, empty.percentile(99)) == (0, 0.0, 0.0)


def test_to_dict_has_the_percentiles_and_histogram():
    d = RangeStats.of(_values()).to_dict()
    assert set(d["percentiles_abs"]) == {"p99", "p99.9", "p99.99"}
    assert all(isinstance(k, str) for k in d["log2_histogram"])


def test_the_scheme_rules_import_neither_the_runtime_nor_onnxruntime():
    code = ("import sys; import ristretto_onnx.schemes, ristretto_onnx.range_rules, ristretto_onnx.stats; "
            "print(sorted(m for m in sys.modules if m.startswith(('ristretto_onnx.runtime', 'onnxruntime', "
            "'ristretto_onnx.passes'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
