"""A wrong result must not look like a right one: quantize warns when minifloat flushes weights.

Eq. 6.2's exponent split keeps the largest value; on the digits CNN at 8 bits it rounds 93 % of
fc1's weights to zero (ResNet-20: 9.9 % top-1, issue 10). ``quantize`` says so on stderr.
"""

from __future__ import annotations

from ristretto_onnx.cli import main


def test_minifloat_flush_is_reported_and_dfp_is_quiet(tmp_path, capsys):
    assert main(["quantize", "zoo:digits-cnn", str(tmp_path / "m.onnx"), "--scheme", "minifloat", "--bits", "8"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: minifloat:8:3 rounds more than 25 % of the values to zero in 6 of 12 groups "
                          "(worst: fc1/weights, 93 %)")
    assert main(["quantize", "zoo:digits-cnn", str(tmp_path / "d.onnx"), "--scheme", "dfp", "--bits", "8"]) == 0
    assert capsys.readouterr().err == ""
