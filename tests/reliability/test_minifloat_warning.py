"""A wrong result must not look like a right one: quantize warns when minifloat flushes weights.

Eq. 6.2's exponent split keeps the largest value; at 8 bits it can round most small weights to
zero (ResNet-20: 9.9 % top-1, issue 10). ``quantize`` now picks the split on the histograms as
``compress`` does, and still says so on stderr whenever a chosen minifloat format flushes most of
a group to zero.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ristretto_onnx.cli import main
from ristretto_onnx.cli.quantize_cmd import flush_warnings
from ristretto_onnx.formats import Minifloat
from ristretto_onnx.stats import RangeStats


def test_flush_warning_names_the_worst_group():
    rng = np.random.default_rng(0)
    small = RangeStats.of(np.concatenate([rng.normal(0, 1e-3, 930), [10.0] * 70]))
    fine = RangeStats.of(rng.normal(0, 1, 1000))
    fmt = Minifloat(8, 3)
    result = SimpleNamespace(plan={"fc1/weights": fmt, "conv1/weights": fmt, "conv1/bias": None},
                             ranges={"fc1/weights": small, "conv1/weights": fine})
    (line,) = flush_warnings(result)
    assert line.startswith("minifloat:8:3 rounds more than 25 % of the values to zero in 1 of 2 groups "
                           "(worst: fc1/weights, 93 %)")


def test_histogram_split_needs_no_warning(tmp_path, capsys):
    assert main(["quantize", "zoo:digits-cnn", str(tmp_path / "m.onnx"), "--scheme", "minifloat", "--bits", "8"]) == 0
    captured = capsys.readouterr()
    assert "chose exp_bits=4" in captured.out and "warning" not in captured.err
    assert main(["quantize", "zoo:digits-cnn", str(tmp_path / "d.onnx"), "--scheme", "dfp", "--bits", "8"]) == 0
    assert capsys.readouterr().err == ""
