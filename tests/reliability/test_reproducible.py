"""Reproducibility (issue 10, Deliver 7): same inputs and seed, byte-identical model and report.

Wall times live in the report's ``seconds`` field only, so everything else compares equal.
"""

from __future__ import annotations

import json

import pytest

from ristretto_onnx.cli import main

RUNS = {
    "compress": ["compress", "zoo:digits-cnn", "out.onnx", "--seed", "3", "-q"],
    "quantize": ["quantize", "zoo:digits-cnn", "out.onnx", "--scheme", "fixed", "--bits", "6", "--seed", "3"],
}


@pytest.mark.parametrize("command", sorted(RUNS))
def test_same_inputs_and_seed_give_identical_files(tmp_path, monkeypatch, capsys, command):
    outputs = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        monkeypatch.chdir(folder)
        assert main(RUNS[command]) == 0, capsys.readouterr().err
        report = json.loads((folder / "out.json").read_text())
        assert isinstance(report.pop("seconds"), dict)  # the only field that may differ
        outputs.append(((folder / "out.onnx").read_bytes(), report))
    (model_a, report_a), (model_b, report_b) = outputs
    assert model_a == model_b
    assert report_a == report_b
    monkeypatch.chdir(tmp_path / "a")
    assert main([*RUNS[command][:2], "other.onnx", *RUNS[command][3:]]) == 0
    assert (tmp_path / "a" / "other.onnx").read_bytes() == model_a  # the output name is not recorded
