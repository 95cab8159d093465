"""Range calibration: running statistics, histograms, percentiles, one streamed pass."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from ristretto_onnx.data import load_dataset
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.load import load_model
from ristretto_onnx.runtime import calibrate as calibrate_module
from ristretto_onnx.runtime.calibrate import calibrate
from ristretto_onnx.stats import RangeStats
from ristretto_onnx.runtime.session import create_session
from tests import builders as synth


def test_calibrate_matches_the_tensors_values_in_one_pass(monkeypatch):
    m = load_model(synth.conv_relu_conv())
    x = synth.sample_input(m, batch=10, scale=3.0)
    sessions = []
    real = calibrate_module.create_session
    monkeypatch.setattr(calibrate_module, "create_session", lambda *a, **k: sessions.append(1) or real(*a, **k))
    stats = calibrate(m, ["x", "c1", "r1", "y", "w1", "c1"], x, batch_size=3)
    assert len(sessions) == 1  # one session, every tensor at once
    assert list(stats) == ["x", "c1", "r1", "y", "w1"]
    probe = helper.make_tensor_value_info("c1", 1, None)
    m2 = load_model(synth.conv_relu_conv())
    m2.graph.output.append(probe)
    y, c1 = create_session(m2).run(["y", "c1"], {"x": x})
    for name, value in (("x", x), ("c1", c1), ("y", y), ("r1", np.maximum(c1, 0))):
        ref = RangeStats.of(value)
        assert (stats[name].count, stats[name].min, stats[name].max) == (ref.count, ref.min, ref.max), name
        assert stats[name].log2_histogram() == ref.log2_histogram(), name
    assert stats["w1"].count == 4 * 3 * 3 * 3


def test_data_forms_dataset_iterables_dicts(tmp_path):
    m = load_model(synth.conv_relu_conv())
    x = synth.sample_input(m, batch=6)
    np.savez(tmp_path / "d.npz", images=x, labels=np.arange(6))
    ds = load_dataset(tmp_path / "d.npz")
    want = calibrate(m, ["y"], x)["y"]
    for data in (ds, [(x[:4], None), (x[4:], None)], [x[:2], x[2:]], [{"x": x}]):
        got = calibrate(m, ["y"], data, batch_size=4)["y"]
        assert (got.count, got.min, got.max) == (want.count, want.min, want.max)


def test_errors():
    m = load_model(synth.conv_relu_conv())
    with pytest.raises(RistrettoError, match="no such tensor"):
        calibrate(m, ["nope"], synth.sample_input(m))
    with pytest.raises(RistrettoError, match="empty"):
        calibrate(m, ["y"], [])
    two = load_model(synth.weights_as_inputs())
    with pytest.raises(RistrettoError, match="2 runtime inputs"):
        calibrate(two, ["y"], [np.zeros((1, 6), np.float32)])


def test_models_over_the_protobuf_limit_go_through_a_temporary_file(monkeypatch):
    from ristretto_onnx.passes import save as save_module
    from ristretto_onnx.runtime.calibrate import session_any_size

    m = load_model(synth.conv_relu_conv())
    x = synth.sample_input(m)
    want = calibrate(m, ["c1"], x)["c1"]
    monkeypatch.setattr(save_module, "PROTO_LIMIT", 1000)
    monkeypatch.setattr(save_module, "EXTERNAL_MIN_BYTES", 16)
    got = calibrate(m, ["c1"], x)["c1"]
    assert (got.min, got.max, got.count) == (want.min, want.max, want.count)
    y = session_any_size(m).run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, create_session(m).run(None, {"x": x})[0])
