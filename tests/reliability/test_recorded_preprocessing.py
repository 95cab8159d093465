"""A written model remembers its preprocessing (issue 10, Deliver 2).

``eval`` of a compressed or quantized zoo model with no preprocessing flags scores what it scores
with the right flags, and says that it applied the recorded preprocessing; an explicit flag wins.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from ristretto_onnx.cli import main
from ristretto_onnx.data.metadata import KEY, recorded
from ristretto_onnx.runtime.evaluate import evaluate
from ristretto_onnx.zoo.store import package_dir


def _eval(capsys, *argv) -> tuple[float, str]:
    assert main(["eval", *map(str, argv), "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out)["top1"], captured.err


def test_compressed_digits_model_is_scored_with_its_recorded_preprocessing(tmp_path, capsys):
    out = tmp_path / "d.onnx"
    assert main(["compress", "zoo:digits-cnn", str(out), "-q"]) == 0
    capsys.readouterr()
    pre, offset = recorded(out)
    assert (str(pre), offset) == ("scale=1/255;add_channel_axis", 0)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props[KEY])["layout"] == "NCHW"

    test = package_dir() / "digits-test.npz"
    plain, _ = _eval(capsys, out, "--data", test)
    flagged, _ = _eval(capsys, out, "--data", test, "--scale", "1/255")
    raw, _ = _eval(capsys, out, "--data", test, "--scale", "1")  # an explicit flag wins
    assert plain == flagged == pytest.approx(0.982, abs=0.01) and raw < plain - 0.05
    assert main(["eval", str(out), "--data", str(test)]) == 0
    assert "note: using the preprocessing recorded in" in capsys.readouterr().err
    # the Python API applies it too
    assert evaluate(str(out), str(test), "top1", progress=False)["top1"] == plain


@pytest.mark.slow
def test_quantized_resnet20_without_flags_scores_as_with_them(tmp_path, capsys, zoo_env):
    with np.load(zoo_env / "datasets" / "cifar10" / "test.npz") as d:
        np.savez(tmp_path / "c1k.npz", images=d["images"][:1000], labels=d["labels"][:1000])
    out = tmp_path / "r20.onnx"
    assert main(["quantize", "zoo:resnet20-cifar10", str(out), "--format", "fixed:16:10"]) == 0
    capsys.readouterr()
    plain, note = _eval(capsys, out, "--data", tmp_path / "c1k.npz")
    flagged, _ = _eval(capsys, out, "--data", tmp_path / "c1k.npz", "--scale", "1/255",
                       "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225")
    assert plain == flagged and plain > 0.7  # not the 0.11 of raw pixels (issue 10)
