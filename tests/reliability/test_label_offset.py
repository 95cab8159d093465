"""``--label-offset N``: data whose labels are not the model's class indices (issue 10, Deliver 2).

Model class = dataset label + N. ``compress``/``quantize`` apply it to their data and record it in
the written model (``ristretto.preprocess``); ``eval`` applies the recorded offset by default and
an explicit ``--label-offset`` wins, as the preprocessing flags do. An offset that makes a label
negative is a usage error (exit 2).
"""

from __future__ import annotations

import json

import numpy as np

from ristretto_onnx.cli import main
from ristretto_onnx.data.metadata import recorded
from ristretto_onnx.zoo.store import package_dir


def _top1(capsys, *argv) -> float:
    assert main(["eval", *map(str, argv), "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)["top1"]


def test_label_offset_is_applied_recorded_and_overridden(tmp_path, capsys):
    with np.load(package_dir() / "digits-test.npz") as d:
        images, labels = d["images"], d["labels"]
    plain, one_based = tmp_path / "plain.npz", tmp_path / "one.npz"
    np.savez(plain, images=images, labels=labels)
    np.savez(one_based, images=images, labels=labels + 1)  # 1 .. 10 for classes 0 .. 9
    model = package_dir() / "digits-cnn.onnx"

    # without the flag the 1-based labels do not fit the 10 classes
    out = tmp_path / "q.onnx"
    argv = ["quantize", str(model), str(out), "--scheme", "dfp", "--bits", "8", "--calib", str(one_based),
            "--scale", "1/255"]
    assert main(argv) == 1
    assert "labels go up to 10" in capsys.readouterr().err
    assert main([*argv, "--label-offset", "-1"]) == 0
    capsys.readouterr()
    assert recorded(out)[1] == -1

    reference = _top1(capsys, out, "--data", plain, "--label-offset", "0")  # the flag wins
    assert reference > 0.9
    assert _top1(capsys, out, "--data", one_based) == reference  # the recorded -1 applies
    assert _top1(capsys, out, "--data", one_based, "--label-offset", "-1") == reference
    assert _top1(capsys, model, "--data", plain) == _top1(capsys, model, "--data", one_based, "--label-offset", "-1")

    c = tmp_path / "c.onnx"
    assert main(["compress", str(model), str(c), "--data", str(one_based), "--label-offset", "-1",
                 "--scale", "1/255", "-q", "--min-bits", "6", "--max-bits", "8"]) == 0
    capsys.readouterr()
    assert recorded(c)[1] == -1
    assert _top1(capsys, c, "--data", one_based) == _top1(capsys, c, "--data", plain, "--label-offset", "0")


def test_an_offset_that_makes_a_label_negative_is_a_usage_error(tmp_path, capsys):
    data = package_dir() / "digits-test.npz"
    assert main(["eval", str(package_dir() / "digits-cnn.onnx"), "--data", str(data), "--label-offset", "-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ristretto-onnx: error: --label-offset -3 makes label 0 of {data} negative (-3); "
                   "model classes start at 0"]
