"""Metrics on hand-made outputs, and one-line errors for bad custom metrics."""

from __future__ import annotations

import numpy as np
import pytest

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.runtime.metrics import accumulator, agreement, load_metric, top1_correct, topk_correct

OUT = np.array([
    [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],   # top1 = 1
    [0.5, 0.1, 0.2, 0.3, 0.4, 0.0],   # top1 = 0; ranks: 0,4,3,2,1,5
    [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],   # top1 = 5
    [0.3, 0.3, 0.1, 0.0, 0.0, 0.0],   # tie: argmax picks 0
], dtype=np.float32)


def test_top1_counts_exactly():
    assert top1_correct(OUT, np.array([1, 0, 5, 0])) == 4
    assert top1_correct(OUT, np.array([1, 4, 0, 1])) == 1


def test_top5_counts_exactly():
    # row 1: label 5 has the smallest score (rank 6) -> miss; label 1 is 5th -> hit
    assert topk_correct(OUT, np.array([1, 5, 5, 0]), 5) == 3
    assert topk_correct(OUT, np.array([1, 1, 5, 0]), 5) == 4
    assert topk_correct(OUT, np.array([2, 2, 2, 2]), 1) == 0


def test_fidelity_is_agreement_with_the_reference_top1():
    assert agreement(OUT, np.array([1, 0, 5, 0])) == 4
    assert agreement(OUT, np.array([1, 1, 1, 1])) == 1


def test_accumulators_stream_over_batches():
    labels = np.array([1, 0, 5, 1])
    acc = accumulator("top1")
    acc.update(OUT[:2], labels[:2], None)
    acc.update(OUT[2:], labels[2:], None)
    assert acc.value() == 0.75
    fid = accumulator("fidelity")
    fid.update(OUT, None, np.array([1, 0, 0, 0]))
    assert fid.value() == 0.75


def test_custom_metric_from_a_file(tmp_path):
    f = tmp_path / "mymetric.py"
    f.write_text("import numpy as np\n"
                 "def mean_max(outputs, labels):\n"
                 "    return float(outputs.max(axis=1).mean())\n")
    acc = accumulator(f"{f}:mean_max")
    acc.update(OUT[:3], None, None)
    acc.update(OUT[3:], None, None)
    assert acc.value() == pytest.approx(float(OUT.max(axis=1).mean()))


@pytest.mark.parametrize("spec, words", [
    ("nocolon", "module:function"),
    ("no_such_module_xyz:f", "cannot import"),
    ("numpy:no_such_function", "has no"),
    ("numpy:pi", "not callable"),
    ("/nonexistent/m.py:f", "not found"),
    ("top2", "unknown metric"),
])
def test_bad_custom_metrics_are_one_line_errors(spec, words):
    with pytest.raises(RistrettoError) as e:
        accumulator(spec)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_custom_metric_that_raises_is_reported(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("def m(outputs, labels):\n    raise ValueError('boom\\nsecond line')\n")
    acc = accumulator(f"{f}:m")
    acc.update(OUT, None, None)
    with pytest.raises(RistrettoError, match="boom"):
        acc.value()
    assert load_metric(f"{f}:m").__name__ == "m"


def test_one_registry_for_evaluation_and_the_search_scorer():
    from ristretto_onnx.runtime.metrics import BUILTIN, PER_SAMPLE
    from ristretto_onnx.scoring import Scorer

    rng = np.random.default_rng(3)
    out = rng.standard_normal((64, 10)).astype(np.float32)
    out[:8, :6] = 1.0  # ties at the 5th place count for the label, in both readers
    labels = rng.integers(0, 10, 64)
    ref = rng.integers(0, 10, 64)
    assert tuple(PER_SAMPLE) == BUILTIN
    for name in BUILTIN:
        acc = accumulator(name)
        acc.update(out, labels, ref)
        hits = PER_SAMPLE[name](out, labels, ref)
        assert hits.shape == (64,) and acc.correct == int(hits.sum())
    batches = [(out[:32], labels[:32]), (out[32:], labels[32:])]
    scorer = Scorer(batches, lambda plan, x: x, lambda x: x, metric="top5", screen_fraction=1.0)
    assert scorer.score({}).value == topk_correct(out, labels, 5) / 64
