"""The fine-tuned columns of the thesis reproduction (bench/reproduce_finetune.py)."""

from __future__ import annotations

import pytest

from bench import reproduce_finetune as rf


def test_recipes_and_overrides():
    assert rf.recipe_for("lenet-mnist", quick=False) == rf.Recipe(2, 1e-3, 64, 10000)
    assert rf.recipe_for("lenet-mnist", quick=True).train_size == 1000
    assert rf.recipe_for("resnet20-cifar10", quick=False, epochs=3, train_size=0) == rf.Recipe(3, 1e-4, 128, None)
    assert rf.recipe_for("squeezenet1.1-imagenet", quick=False) is None
    assert "ImageNet training" in rf.measure(type("B", (), {"spec": type("S", (), {"name": "squeezenet1.1-imagenet"})})(),
                                             {}, None, print)["skipped"]


def test_section_prints_ours_and_the_thesis_after_before_with_the_recipe():
    results = {"networks": {
        "lenet-mnist": {"spec": {"label": "LeNet / MNIST", "thesis": "LeNet"}, "finetune": {
            "recipe": {"epochs": 2, "lr": 1e-3, "batch_size": 64, "train_size": 10000, "seed": 0},
            "rows": [{"table": "5.2", "thesis": "LeNet (Exp 2)", "config": "dfp 4/2/2", "start": "MSE ranges",
                      "n": 10000, "fp32": 0.9915, "before": 0.9604, "after": 0.9812, "best_epoch": 2,
                      "n_train": 10000}]}},
        "squeezenet1.1-imagenet": {"spec": {"label": "SqueezeNet", "thesis": "CaffeNet"},
                                   "finetune": {"skipped": "no training data"}},
    }}
    text = rf.section(results)
    assert "| 5.2 | LeNet / MNIST | dfp 4/2/2, from MSE ranges | 99.15 (10,000 images) | 98.12 (96.04) |" in text
    assert "2 epochs x 10,000 images, Adam 0.001, batch 64; best epoch 2" in text
    assert "| LeNet (Exp 2) | 99.15 | 98.81 (98.03) |" in text
    assert "not fine-tuned: no training data" in text
    assert rf.section({"networks": {"x": {"spec": {}}}}).startswith("Not measured")


@pytest.mark.slow
def test_lenet_fine_tuned_rows_on_a_small_case(shared_zoo, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("RISTRETTO_ZOO", str(shared_zoo))
    from bench.common import NetworkSpec, open_bench
    from bench.reproduce import table_5_2

    spec = NetworkSpec("lenet-mnist", "LeNet / MNIST", "LeNet", table_size=1000, calib_size=200,
                       compress_schemes=())
    bench = open_bench(spec, log=lambda msg: None)
    res = {"spec": {"thesis": "LeNet"}, "t52": table_5_2(bench, [(4, 2, 2)])}
    res["t52"][0]["thesis"] = "LeNet (Exp 2)"
    out = rf.measure(bench, res, rf.Recipe(epochs=1, lr=1e-3, batch_size=64, train_size=2000), lambda m: None)
    (row,) = out["rows"]
    assert row["config"] == "dfp 4/2/2" and row["n"] == 1000 and row["n_train"] == 2000
    # the trainer's exact scorer and the bench's scorer agree on the model before fine-tuning
    assert row["before"] == pytest.approx(row["before_table"], abs=1e-12)
    assert row["before"] == max(res["t52"][0]["accuracy"], res["t52"][0]["accuracy_mse"])
    assert row["after"] >= row["before"] + 0.01 and row["after"] == max(row["scores"])
