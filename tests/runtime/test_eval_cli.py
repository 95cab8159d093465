"""``ristretto-onnx eval``: JSON output, metrics, one-line errors; the zoo accuracies (slow)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from ristretto_onnx.cli import main
from ristretto_onnx.runtime.session import create_session
from tests.builders import annotate, classifier_data, residual_cnn


@pytest.fixture
def files(tmp_path):
    fp32 = residual_cnn()
    x, y = classifier_data(80)
    onnx.save(fp32, tmp_path / "fp32.onnx")
    onnx.save(annotate(fp32), tmp_path / "sim.onnx")
    np.savez(tmp_path / "data.npz", images=x, labels=y)
    np.savez(tmp_path / "nolabels.npz", images=x)
    return tmp_path, fp32, x, y


def test_json_output_has_one_key_per_metric(files, capsys):
    tmp, fp32, x, y = files
    assert main([
        "eval", str(tmp / "sim.onnx"), "--data", str(tmp / "data.npz"), "--metric", "top1",
        "--metric", "top5", "--batch-size", "16", "--json",
    ]) == 0
    out = json.loads(capsys.readouterr().out)
    scores = create_session(annotate(fp32)).run(None, {"input": x})[0]
    assert out["top1"] == float(np.mean(scores.argmax(1) == y))
    assert set(out) == {"top1", "top5", "images_per_s", "n", "seconds"}
    assert out["n"] == 80 and out["images_per_s"] > 0


def test_fidelity_with_reference_and_text_output(files, capsys):
    tmp, *_ = files
    assert main(["eval", str(tmp / "fp32.onnx"), "--data", str(tmp / "nolabels.npz"),
                 "--reference", str(tmp / "fp32.onnx"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "fidelity: 1.0000" in text and "images/s" in text


@pytest.mark.parametrize("args, words, code", [
    (["--data", "DATA"], None, 0),
    (["--data", "missing.npz"], "not found", 1),
    (["--data", "DATA", "--metric", "nomodule_xyz:f"], "cannot import", 2),
    (["--data", "NOLABELS", "--metric", "fidelity"], "--reference", 1),
    ([], "--data", 2),
])
def test_errors_are_one_line(files, capsys, args, words, code):
    tmp, *_ = files
    args = [a.replace("NOLABELS", str(tmp / "nolabels.npz")).replace("DATA", str(tmp / "data.npz"))
            for a in args]
    expected = code
    code = main(["eval", str(tmp / "fp32.onnx"), *args, "--json"])
    err = capsys.readouterr().err
    if words is None:
        assert code == 0
        return
    assert code == expected and words in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lenet-mnist", "resnet20-cifar10", "resnet32-cifar10", "resnet44-cifar10"])
def test_fp32_zoo_accuracy_is_reproduced_exactly(zoo_env, name, capsys):
    manifest = json.loads((zoo_env / "MANIFEST.json").read_text())
    want = next(f["fp32_top1_measured"] for f in manifest["files"] if f.get("name") == name)
    assert main(["eval", f"zoo:{name}", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["top1"] == want and got["n"] == 10000


@pytest.mark.slow
def test_simulated_resnet20_is_bit_identical_on_the_whole_test_set(zoo_env):
    from ristretto_onnx import zoo
    from ristretto_onnx.range_rules import dfp_format
    from ristretto_onnx.passes.pipeline import prepare, simulate
    from ristretto_onnx.ranges import group_ranges
    from ristretto_onnx.runtime.simulator import Simulator

    prepared = prepare(str(zoo.resolve_model("zoo:resnet20-cifar10")))
    calib = zoo.model_dataset("resnet20-cifar10", "calib").take(256)
    ranges = group_ranges(prepared.float_model, prepared.layers, calib)
    plan = {g.id: dfp_format(ranges[g.id].max_abs, 8, layer_output=g.role == "outputs")
            for g in prepared.layers.groups if g.role in ("inputs", "weights", "outputs")}
    plain = create_session(simulate(prepared, plan))
    for parametric in (True, False):
        sim = Simulator(prepared.annotated, parametric=parametric)
        sim.set_formats(plan, replace=True)
        for x, _ in zoo.model_dataset("resnet20-cifar10", "test").batches(500):
            want = plain.run(None, {"input": x})[0]
            assert np.array_equal(sim.run(x).view(np.uint32), want.view(np.uint32))
