"""One data loading everywhere (issue 10, Deliver 3): NHW, NHWC and NCHW arrays in every command.

MNIST's own uint8 (N,H,W) arrays were rejected by compress, quantize and analyze with onnxruntime's
rank error. Every command now fits the data to the model's input (a channel axis added, float
NHWC transposed) and scores the same numbers whatever the layout.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from ristretto_onnx.cli import main
from ristretto_onnx.zoo.store import package_dir


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layouts")
    model = onnx.load(str(package_dir() / "digits-cnn.onnx"))
    del model.metadata_props[:]  # a plain FP32 model that records nothing
    onnx.save(model, folder / "plain.onnx")
    with np.load(package_dir() / "digits-test.npz") as d:
        x, y = d["images"], d["labels"]
    assert x.shape[1:] == (8, 8) and x.dtype == np.uint8  # NHW, as MNIST ships
    scaled = x.astype(np.float32) / np.float32(255)
    np.savez(folder / "nhw.npz", images=x, labels=y)
    np.savez(folder / "nhwc.npz", images=x[..., None], labels=y)
    np.savez(folder / "nchw-float.npz", images=scaled[:, None], labels=y)
    np.savez(folder / "nhwc-float.npz", images=scaled[..., None], labels=y)
    return folder


LAYOUTS = ["nhw.npz", "nhwc.npz", "nchw-float.npz", "nhwc-float.npz"]


def _flags(layout: str) -> list[str]:
    return [] if "float" in layout else ["--scale", "1/255"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_command_reads_every_layout_alike(files, tmp_path, capsys, layout):
    data = str(files / layout)
    model = str(files / "plain.onnx")
    assert main(["quantize", model, str(tmp_path / "q.onnx"), "--scheme", "dfp", "--bits", "8",
                 "--calib", data, *_flags(layout)]) == 0
    quantized = json.loads((tmp_path / "q.json").read_text())["formats"]
    assert main(["analyze", model, "--calib", data, "--json", str(tmp_path / "a.json"), *_flags(layout)]) == 0
    ranges = json.loads((tmp_path / "a.json").read_text())["layers"][0]["groups"]["inputs"]["max_abs"]
    assert main(["eval", model, "--data", data, "--json", *_flags(layout)]) == 0
    top1 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top1"]
    # raw images scaled by 1/255 are known non-negative (ufixed, issue 15); float arrays are not
    expected = "fixed:8:7" if "float" in layout else "ufixed:8:8"
    assert (quantized["conv1/inputs"], ranges, top1) == (expected, pytest.approx(1.0), 0.984)


def test_compress_on_nhw_data(files, tmp_path, capsys):
    assert main(["compress", str(files / "plain.onnx"), str(tmp_path / "c.onnx"), "--data", str(files / "nhw.npz"),
                 "--scale", "1/255", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["baseline"] == 0.984 and report["final"] >= 0.974
