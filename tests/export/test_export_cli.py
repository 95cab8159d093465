"""The export and report commands: outputs, --force, one-line errors, the input left alone."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from ristretto_onnx.cli import main
from tests.export.sims import run, sample, sim_model


@pytest.fixture
def sim_path(tmp_path):
    path = tmp_path / "sim.onnx"
    onnx.save(sim_model("flatten_gemm", "dfp8"), path)
    return path


def _cli(*args):
    """The CLI in a subprocess: exit code and stderr exactly as a user sees them."""
    return subprocess.run([sys.executable, "-m", "ristretto_onnx", *map(str, args)], capture_output=True, text=True)


def _main(capsys, *args):
    """The CLI in-process (faster): exit code, stdout, stderr."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("to", ["qdq", "qonnx"])
def test_export_writes_the_model_and_needs_force_to_overwrite(sim_path, tmp_path, to, capsys):
    before = sim_path.read_bytes()
    out = tmp_path / f"out-{to}.onnx"
    assert main(["export", str(sim_path), str(out), "--to", to]) == 0
    model = onnx.load(out)
    onnx.checker.check_model(model)
    assert model.ir_version == 10 and sim_path.read_bytes() == before
    if to == "qdq":
        x = sample("flatten_gemm")
        assert np.array_equal(run(model, x), run(onnx.load(sim_path), x))
    stamp = out.stat().st_mtime_ns
    r = _cli("export", sim_path, out, "--to", to)
    assert r.returncode == 2 and "exists; pass --force" in r.stderr and r.stderr.count("\n") == 1
    assert out.stat().st_mtime_ns == stamp
    assert main(["export", str(sim_path), str(out), "--to", to, "--force"]) == 0
    assert out.stat().st_mtime_ns != stamp


@pytest.mark.parametrize("args, code, text", [
    (["{sim}", "{tmp}/o.onnx", "--to", "tflite"], 2, "unknown export target 'tflite'"),
    (["{tmp}/missing.onnx", "{tmp}/o.onnx", "--to", "qdq"], 1, "model file not found"),
    (["{sim}", "{tmp}/o.txt", "--to", "qdq"], 2, "must end in .onnx"),
    (["{sim}", "{sim}", "--to", "qdq", "--force"], 2, "refusing to overwrite an input"),
    (["{sim}", "{sim}", "--to", "c", "--force"], 2, "is a file; --to c writes a folder"),
    (["{sim}", "{tmp}", "--to", "c", "--force"], 2, "holds the input model"),
    (["{sim}", "{tmp}/no/such/o.onnx", "--to", "qdq"], 1, "does not exist"),
    (["{float}", "{tmp}/o.onnx", "--to", "qdq"], 1, "has no QuantizeSim node"),
])
def test_export_errors_are_one_line_and_write_nothing(sim_path, tmp_path, args, code, text, capsys):
    from tests import builders as synth

    onnx.save(synth.conv_relu_conv(), tmp_path / "float.onnx")
    fill = {"sim": sim_path, "tmp": tmp_path, "float": tmp_path / "float.onnx"}
    got, _, err = _main(capsys, "export", *[a.format(**fill) for a in args])
    assert got == code and text in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "o.txt").exists()


def test_report_prints_markdown_and_writes_json_and_png(sim_path, tmp_path, capsys):
    r = _cli("report", sim_path, "--sram-kib", "1", "--json", tmp_path / "r.json", "--plot", tmp_path / "r.png")
    assert r.returncode == 0, r.stderr
    assert "Hardware report" in r.stdout and "MACs" in r.stdout and "SRAM 1.0 KiB" in r.stdout
    d = json.loads((tmp_path / "r.json").read_text())
    assert [layer["name"] for layer in d["layers"]] == ["conv", "fc1", "fc2"]
    assert d["totals"]["macs"] == 72 * 27 + 90 + 20 and d["totals"]["sram_bytes"] == 1024
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = _main(capsys, "report", sim_path, "--json", tmp_path / "r.json")
    assert code == 2 and "--force" in err
