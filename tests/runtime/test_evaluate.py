"""evaluate() on a tiny synthetic model: exact metric values, fidelity, the baseline memo."""

from __future__ import annotations

import numpy as np
import pytest

from ristretto_onnx.data import load_dataset
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.runtime import baseline as baseline_mod
from ristretto_onnx.runtime import evaluate as evaluate_mod
from ristretto_onnx.runtime.evaluate import EvalResult, evaluate
from ristretto_onnx.runtime.session import create_session
from tests.builders import annotate, classifier_data, residual_cnn


def numpy_scores(model, x):
    return create_session(model).run(None, {"input": x})[0]


def test_metrics_match_numpy_on_the_same_outputs():
    model = residual_cnn()
    x, y = classifier_data(100)
    out = numpy_scores(model, x)
    want_top1 = float(np.mean(out.argmax(1) == y))
    ranks = (out > out[np.arange(len(y)), y][:, None]).sum(1)
    want_top5 = float(np.mean(ranks < 5))
    result = evaluate(model, load_dataset(x, labels=y), ("top1", "top5"), batch_size=32)
    assert isinstance(result, EvalResult)
    assert result.metrics == {"top1": want_top1, "top5": want_top5}
    assert result.n == 100 and result.images_per_s > 0
    d = result.to_dict()
    assert d["top1"] == want_top1 and "images_per_s" in d


def test_simulated_model_fidelity_against_the_fp32_reference():
    fp32 = residual_cnn()
    sim = annotate(fp32, fmt="fixed:4:1", weight_fmt="fixed:4:3")
    x, _ = classifier_data(64)
    ds = load_dataset(x)  # no labels
    want = float(np.mean(numpy_scores(sim, x).argmax(1) == numpy_scores(fp32, x).argmax(1)))
    result = evaluate(sim, ds, ("fidelity",), batch_size=16, reference=fp32)
    assert result["fidelity"] == want
    assert 0 < want < 1  # a coarse format: some, not all, predictions change
    assert evaluate(fp32, ds, "fidelity", reference=fp32)["fidelity"] == 1.0


def test_baseline_is_computed_once_per_model_and_data(monkeypatch):
    baseline_mod.clear()
    fp32 = residual_cnn()
    x, y = classifier_data(48)
    ds = load_dataset(x, labels=y)
    calls = []
    import ristretto_onnx.runtime.evaluate as ev

    real = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = evaluate_mod.baseline(fp32, ds)
    again = evaluate_mod.baseline(fp32, ds)
    assert first is again and len(calls) == 1
    assert first.top1 == float(np.mean(numpy_scores(fp32, x).argmax(1) == y))
    other = evaluate_mod.baseline(fp32, ds.take(10))
    assert other.n == 10 and len(calls) == 2


def test_errors_are_one_line():
    x, _ = classifier_data(8)
    with pytest.raises(RistrettoError, match="needs labels"):
        evaluate(residual_cnn(), load_dataset(x), "top1")
    with pytest.raises(RistrettoError, match="--reference"):
        evaluate(residual_cnn(), load_dataset(x), "fidelity")
    with pytest.raises(RistrettoError, match="unknown metric"):
        evaluate(residual_cnn(), load_dataset(x), "accuracy")
