"""``compress --finetune`` on the embedded digits CNN: fine-tuning buys bits within the tolerance."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from ristretto_onnx import zoo  # noqa: E402
from ristretto_onnx.cli import main  # noqa: E402
from ristretto_onnx.compress import CompressOptions  # noqa: E402
from ristretto_onnx.finetune.compress_driver import compress_finetune  # noqa: E402
from ristretto_onnx.finetune.trainer import FinetuneOptions  # noqa: E402
from ristretto_onnx.runtime.session import create_session  # noqa: E402


def _top1(model, dataset) -> float:
    session = create_session(str(model))
    x, y = next(dataset.batches(len(dataset)))
    return float((session.run(None, {"input": x})[0].argmax(1) == y).mean())

pytestmark = pytest.mark.slow  # a few fine-tuning runs each (about 30 s on 2 free cores)


def test_fine_tuning_buys_bits_within_the_tolerance(tmp_path):
    train = zoo.model_dataset("digits-cnn", "calib")
    test = zoo.model_dataset("digits-cnn", "test")
    r = compress_finetune(str(zoo.resolve_model("zoo:digits-cnn")), test, train,
                          options=CompressOptions(tolerance=0.03, max_bits=8),
                          finetune_options=FinetuneOptions(epochs=3, lr=3e-3, weight_rounding="nearest_even",
                                                           device="cpu"))
    bought = r.report.bits_bought
    assert sum(b["bought"] for b in bought.values()) >= 1
    for b in bought.values():
        assert b["fine_tuned"] <= b["post_training"] and b["bought"] == b["post_training"] - b["fine_tuned"]
    assert r.report.weight_bytes <= r.report.weight_bytes_post_training
    # the model, scored independently on the same data, holds the tolerance with the narrower plan
    out, report = r.save(tmp_path / "d.onnx")
    final = _top1(out, test)
    assert final == pytest.approx(r.finetuned.after, abs=1e-12)
    assert r.report.compress["baseline"] - final <= 0.03 + 1e-12
    assert all(fmt is None or fmt.bits <= r.post_training.plan[g].bits for g, fmt in r.plan.items())
    assert json.loads(report.read_text())["bits_bought"] == bought


def test_compress_finetune_command_reports_bits_bought(tmp_path, capsys):
    out = tmp_path / "digits.onnx"
    code = main(["compress", "zoo:digits-cnn", str(out), "--finetune", "--epochs", "1", "--lr", "3e-3",
                 "--tolerance", "0.02", "--max-bits", "8", "-q"])
    assert code == 0
    assert "bought by fine-tuning" in capsys.readouterr().out
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(report["bits_bought"]) == {"fc_weights", "conv_weights", "activations"}
    assert report["candidates"][0]["what"] == "post-training plan" and report["candidates"][0]["holds"]
    assert len(report["candidates"]) >= 4  # every category was tried one bit narrower
    ft = report["finetune"]
    assert ft["after"] >= ft["before"] and report["compress"]["baseline"] - ft["after"] <= 0.02 + 1e-12
