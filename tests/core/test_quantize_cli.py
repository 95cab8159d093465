"""``ristretto-onnx quantize``: files written, formats chosen, errors, input untouched."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import onnx
import pytest

from ristretto_onnx.cli import main
from ristretto_onnx.formats import parse_format
from ristretto_onnx.runtime.session import create_session
from tests import builders as synth


@pytest.fixture
def files(tmp_path):
    """A residual model (BN not folded) and labelled float calibration data on disk."""
    m = synth.residual_block()
    model_path = tmp_path / "in.onnx"
    onnx.save(m, model_path)
    x = synth.sample_input(m, batch=40, scale=1.5)
    labels = create_session(m).run(None, {"x": x})[0].reshape(40, -1).argmax(1)
    np.savez(tmp_path / "calib.npz", images=x, labels=labels)
    return tmp_path, model_path, x


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _quantize(*args):
    return main(["quantize", *map(str, args)])


def _formats(out):
    return json.loads(out.with_suffix(".json").read_text())["formats"]


def test_dfp_writes_a_runnable_model_and_a_sidecar_and_leaves_the_input_alone(files, capsys):
    folder, model_path, x = files
    digest = _sha(model_path)
    out = folder / "out.onnx"
    assert _quantize(model_path, out, "--scheme", "dfp", "--bits", "8", "--calib", folder / "calib.npz") == 0
    assert _sha(model_path) == digest
    m = onnx.load(out)
    onnx.checker.check_model(m)
    assert not any(n.op_type == "BatchNormalization" for n in m.graph.node)
    y = create_session(out).run(None, {"x": x})[0]
    assert np.isfinite(y).all()
    side = json.loads((folder / "out.json").read_text())
    assert side["options"]["scheme"] == "dfp" and side["calib"].endswith("calib.npz")
    assert set(side["formats"]) == {f"block/conv{i}/{r}" for i in (1, 2) for r in ("inputs", "weights", "bias", "outputs")}
    assert side["formats"]["block/conv1/bias"] is None
    assert all(parse_format(f).bits == 8 for f in side["formats"].values() if f)
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["calib.npz", "in.onnx", "out.json", "out.onnx"]


def test_fixed_minifloat_pow2_and_forced_format(files, capsys):
    folder, model_path, _ = files
    calib = folder / "calib.npz"
    out = folder / "f.onnx"
    assert _quantize(model_path, out, "--scheme", "fixed", "--bits", "8", "--calib", calib, "--score-size", "20") == 0
    assert len({f for f in _formats(out).values() if f}) <= 3  # one format per category
    assert all(f.startswith("fixed:8:") for f in _formats(out).values() if f)
    assert "activations 8-bit splits (top1): frac_bits=" in capsys.readouterr().out
    assert _quantize(model_path, out, "--force", "--scheme", "minifloat", "--bits", "8", "--calib", calib) == 0
    assert all(f.startswith("minifloat:8:") for f in _formats(out).values() if f)
    assert _quantize(model_path, out, "--force", "--scheme", "pow2", "--exp-min", "-6", "--exp-max", "0") == 0
    assert {g for g, f in _formats(out).items() if f} == {"block/conv1/weights", "block/conv2/weights"}
    assert set(_formats(out).values()) == {None, "pow2:-6:0"}
    assert _quantize(model_path, out, "--force", "--format", "fixed:16:10", "--quantize-bias", "--report", folder / "r.json") == 0
    side = json.loads((folder / "r.json").read_text())["formats"]
    assert set(side.values()) == {"fixed:16:10"}


def test_layer_selection_and_no_fold_bn(files):
    folder, model_path, _ = files
    out = folder / "sel.onnx"
    assert _quantize(model_path, out, "--format", "fixed:8:4", "--layers", "conv2,nothing{1,2}", "--no-fold-bn") == 0
    formats = _formats(out)
    assert {g for g, f in formats.items() if f} == {"block/conv2/inputs", "block/conv2/weights", "block/conv2/outputs"}
    assert sum(n.op_type == "BatchNormalization" for n in onnx.load(out).graph.node) == 2
    assert _quantize(model_path, out, "--force", "--format", "fixed:8:4", "--exclude", "conv1", "--exclude", "conv2") == 0
    assert not any(_formats(out).values())


def test_uint8_data_with_preprocessing_flags(tmp_path):
    m = synth.flatten_gemm()
    onnx.save(m, tmp_path / "in.onnx")
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)  # NHWC pixels
    np.savez(tmp_path / "px.npz", images=images)
    out = tmp_path / "o.onnx"
    assert _quantize(tmp_path / "in.onnx", out, "--scheme", "dfp", "--bits", "8", "--calib", tmp_path / "px.npz",
                     "--scale", "1/255", "--mean", "0.5", "--std", "0.25") == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["max_abs"]["conv/inputs"] == pytest.approx(2.0, abs=0.05)  # (255/255 - 0.5) / 0.25


@pytest.mark.parametrize("args, message, code", [
    (["--scheme", "dfp"], "needs --bits", 2),
    (["--bits", "8"], "give a --scheme", 2),
    (["--scheme", "dfp", "--bits", "8"], "needs calibration data", 2),
    (["--scheme", "dfp", "--bits", "8", "--calib", "missing.npz"], "dataset not found", 1),
    (["--format", "fixed:8"], "cannot parse format", 2),
    (["--format", "fixed:8:4", "--layers", "nomatch"], "no layer matches", 1),
    (["--scheme", "int4", "--bits", "4"], "unknown scheme", 2),
])
def test_errors_are_one_line_and_write_nothing(files, capsys, monkeypatch, args, message, code):
    folder, model_path, _ = files
    monkeypatch.chdir(folder)
    out = folder / "bad.onnx"
    assert _quantize(model_path, out, *args) == code  # 2: fix the command line; 1: fix the files
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_output_must_not_be_the_input_and_must_end_in_onnx(files, capsys):
    folder, model_path, _ = files
    digest = _sha(model_path)
    assert _quantize(model_path, model_path, "--format", "fixed:8:4") == 2
    assert "refusing to overwrite an input" in capsys.readouterr().err
    assert _quantize(model_path, folder / "out.txt", "--format", "fixed:8:4") == 2
    assert _sha(model_path) == digest


def test_a_failed_write_leaves_no_partial_output(files, monkeypatch, capsys):
    folder, model_path, _ = files

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    assert _quantize(model_path, folder / "out.onnx", "--format", "fixed:8:4") == 1
    assert "No space left" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["calib.npz", "in.onnx"]


def test_embedded_zoo_model_uses_its_own_calibration_split(tmp_path, empty_zoo_env):
    out = tmp_path / "digits.onnx"
    assert _quantize("zoo:digits-cnn", out, "--scheme", "dfp", "--bits", "8", "--calib-size", "64") == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["calib"] and any(side["formats"].values())
