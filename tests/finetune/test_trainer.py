"""Fine-tuning end to end on the embedded digits CNN: determinism, best epoch, write-back, CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from ristretto_onnx import zoo  # noqa: E402
from ristretto_onnx.cli import main  # noqa: E402
from ristretto_onnx.errors import RistrettoError  # noqa: E402
from ristretto_onnx.finetune.trainer import FinetuneOptions, finetune  # noqa: E402
from ristretto_onnx.finetune.writeback import FINETUNE_KEY, write_back  # noqa: E402
from ristretto_onnx.passes.save import save_model  # noqa: E402
from ristretto_onnx.runtime.evaluate import evaluate  # noqa: E402

OPTS = FinetuneOptions(epochs=2, lr=3e-3, batch_size=32, seed=7, device="cpu", threads=1)


@pytest.fixture(scope="module")
def digits_data():
    return zoo.model_dataset("digits-cnn", "calib"), zoo.model_dataset("digits-cnn", "test")


@pytest.fixture(scope="module")
def tuned(digits_sim, digits_data):
    train, test = digits_data
    return finetune(digits_sim, train, test, options=OPTS)


def test_two_runs_with_one_seed_give_byte_identical_models(digits_sim, digits_data, tuned):
    train, test = digits_data
    again = finetune(digits_sim, train, test, options=OPTS)
    assert again.model.SerializeToString() == tuned.model.SerializeToString()
    other = finetune(digits_sim, train, test, options=FinetuneOptions(**{**OPTS.__dict__, "seed": 8}))
    assert [e.loss for e in other.epochs] != [e.loss for e in tuned.epochs]


def test_fine_tuning_wins_accuracy_back_and_reports_the_exact_score(digits_sim, digits_data, tuned):
    _, test = digits_data
    assert tuned.epochs[0].score == tuned.before
    assert tuned.after == max(e.score for e in tuned.epochs)
    assert tuned.after > tuned.before  # 3-bit weights lose accuracy that training wins back
    # the written model, scored independently by the runtime, has exactly the reported score
    assert evaluate(tuned.model, test)["top1"] == pytest.approx(tuned.after, abs=1e-12)
    assert evaluate(digits_sim, test)["top1"] == pytest.approx(tuned.before, abs=1e-12)
    assert "%" in tuned.headline and f"({100 * tuned.before:.2f} %)" in tuned.headline


def test_write_back_changes_only_the_weights(digits_sim, tuned):
    a, b = onnx.ModelProto(), onnx.ModelProto()
    a.CopyFrom(digits_sim)
    b.CopyFrom(tuned.model)
    assert [n.SerializeToString() for n in a.graph.node] == [n.SerializeToString() for n in b.graph.node]
    assert [(t.name, list(t.dims), t.data_type) for t in a.graph.initializer] == \
        [(t.name, list(t.dims), t.data_type) for t in b.graph.initializer]
    changed = [t.name for t, u in zip(a.graph.initializer, b.graph.initializer)
               if t.SerializeToString() != u.SerializeToString()]
    assert changed and set(changed) <= set(tuned.weights)
    summary = json.loads(next(p.value for p in b.metadata_props if p.key == FINETUNE_KEY))
    assert summary["after"] == round(tuned.after, 6) and summary["best_epoch"] == tuned.best_epoch
    with pytest.raises(RistrettoError, match="no initializer named"):
        write_back(digits_sim, {"nope": np.zeros(1, np.float32)})
    name = a.graph.initializer[0].name
    with pytest.raises(RistrettoError, match="cannot write"):
        write_back(digits_sim, {name: np.zeros(3, np.float32)})


def test_ctrl_c_keeps_the_best_epoch_so_far(digits_sim, digits_data, monkeypatch):
    from ristretto_onnx.finetune import trainer

    train, test = digits_data
    calls = {"n": 0}
    real = trainer._ExactScorer.score

    def score(self, weights):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 0, epoch 1, then Ctrl-C while scoring epoch 2
            raise KeyboardInterrupt
        return real(self, weights)

    monkeypatch.setattr(trainer._ExactScorer, "score", score)
    r = finetune(digits_sim, train, test, options=FinetuneOptions(**{**OPTS.__dict__, "epochs": 4}))
    assert r.interrupted and len(r.epochs) == 2
    assert r.after == max(e.score for e in r.epochs)


def test_finetune_command(tmp_path, digits_sim, capsys):
    sim = tmp_path / "sim.onnx"
    save_model(digits_sim, sim)
    out = tmp_path / "ft.onnx"
    args = ["finetune", str(sim), str(out), "--train-data", "zoo:digits-calib", "--data", "zoo:digits-test",
            "--epochs", "1", "--lr", "3e-3", "--batch-size", "64", "--device", "cpu", "-q"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "%) after (before)" in text
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["epochs"][0]["epoch"] == 0 and len(report["epochs"]) == 2
    assert report["after"] >= report["before"]
    assert main(args) == 2  # OUT exists: needs --force
    assert "pass --force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    assert main(["finetune", str(sim), str(tmp_path / "x.onnx"), "--train-data", "zoo:digits-calib",
                 "--data", "zoo:digits-test", "--device", "cuda"]) == 1 or torch.cuda.is_available()
    assert not (tmp_path / "x.onnx").exists()


def test_missing_torch_is_one_line_with_the_install_hint(tmp_path, digits_sim, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    sim = tmp_path / "sim.onnx"
    save_model(digits_sim, sim)
    code = main(["finetune", str(sim), str(tmp_path / "o.onnx"), "--train-data", "zoo:digits-calib",
                 "--data", "zoo:digits-test"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "pip install 'ristretto-onnx[finetune]'" in err and len(err.splitlines()) == 1
