"""``ristretto-onnx analyze``: the section 4.3 range analysis as table, JSON and PNG."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from ristretto_onnx.analyze import analyze_ranges
from ristretto_onnx.cli import main
from ristretto_onnx.data import load_dataset
from ristretto_onnx.range_rules import dfp_format, integer_bits
from tests import builders as synth


@pytest.fixture
def files(tmp_path):
    m = synth.flatten_gemm()
    onnx.save(m, tmp_path / "in.onnx")
    np.savez(tmp_path / "calib.npz", images=synth.sample_input(m, batch=30, scale=2.0))
    return tmp_path


def test_table_json_and_plot(files, capsys):
    args = ["analyze", files / "in.onnx", "--calib", files / "calib.npz", "--bits", "8",
            "--json", files / "a.json", "--plot", files / "a.png"]
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    assert "Dynamic range" in out and "fc1" in out and "saturated" in out
    report = json.loads((files / "a.json").read_text())
    assert [l["name"] for l in report["layers"]] == ["conv", "fc1", "fc2"]
    g = report["layers"][1]["groups"]["outputs"]
    assert g["int_bits"] == integer_bits(g["max_abs"]) - 1
    assert g["frac_bits"] == dfp_format(g["max_abs"], 8, layer_output=True).frac_bits
    assert g["count"] == 30 * 5 and set(g["percentiles_abs"]) == {"p99", "p99.9", "p99.99"}
    assert sum(g["log2_histogram"].values()) + g["zeros"] == g["count"]
    w = report["layers"][0]["groups"]["weights"]
    assert w["count"] == 2 * 3 * 3 * 3 and w["int_bits"] == integer_bits(w["max_abs"])
    assert (files / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_bits_and_with_layer_filter(files, capsys):
    assert main(["analyze", str(files / "in.onnx"), "--calib", str(files / "calib.npz"),
                 "--layers", "fc", "--json", str(files / "b.json")]) == 0
    report = json.loads((files / "b.json").read_text())
    assert [l["name"] for l in report["layers"]] == ["fc1", "fc2"]
    assert report["layers"][0]["groups"]["weights"]["frac_bits"] is None


def test_needs_data(files, capsys):
    assert main(["analyze", str(files / "in.onnx")]) == 2  # a usage error: the command line lacks --calib
    assert "give --calib" in capsys.readouterr().err


def test_report_api_matches_the_data():
    m = synth.conv_relu_conv()
    x = synth.sample_input(m, batch=8)
    report = analyze_ranges(m, load_dataset(x), bits=6)
    conv1 = report.layers[0]
    assert conv1.group("inputs").stats.max_abs == float(np.abs(x).max())
    assert report.shared_int_bits == integer_bits(max(g.stats.max_abs for l in report.layers
                                                      for g in l.groups if g.role != "bias"))
    assert 0 <= conv1.group("outputs").saturated <= 1
