"""Range calibration: running statistics, histograms, percentiles, one streamed pass."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from ristretto_onnx.data import load_dataset
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.passes.load import load_model
from ristretto_onnx.runtime import calibrate as calibrate_module
from ristretto_onnx.runtime.calibrate import BINS_PER_OCTAVE, RangeAccumulator, RangeStats, calibrate
from ristretto_onnx.runtime.session import create_session
from tests import builders as synth


def _values(n=20000, seed=0):
    r = np.random.default_rng(seed)
    x = (r.standard_normal(n) * np.exp2(r.integers(-12, 6, n))).astype(np.float32)
    x[:500] = 0
    return x


def test_exact_min_max_count_zeros_and_log2_histogram():
    x = _values()
    s = RangeStats.of(x)
    assert (s.count, s.zeros, s.nonfinite) == (x.size, 500, 0)
    assert (s.min, s.max) == (float(x.min()), float(x.max()))
    assert s.max_abs == float(np.abs(x).max())
    nz = np.abs(x[x != 0]).astype(np.float64)
    exps, counts = np.unique(np.floor(np.log2(nz)).astype(int), return_counts=True)
    assert s.log2_histogram() == dict(zip(exps.tolist(), counts.tolist()))


def test_percentiles_are_within_one_fine_bin():
    x = _values()
    s = RangeStats.of(x)
    for q in (50, 99, 99.9, 99.99):
        ref = np.percentile(np.abs(x), q)
        assert abs(s.percentile(q) - ref) <= ref * 2.0 / BINS_PER_OCTAVE + 1e-30
    assert s.percentile(100) == s.max_abs
    assert s.percentile(0) == 0.0


def test_streaming_equals_one_shot():
    x = _values()
    acc = RangeAccumulator()
    for chunk in np.array_split(x, 7):
        acc.update(chunk)
    a, b = acc.result(), RangeStats.of(x)
    assert a == b and np.array_equal(a.hist, b.hist)


def test_nonfinite_values_are_counted_apart_and_saturation_shares():
    x = np.array([np.nan, np.inf, -np.inf, 1.0, -3.0, 0.001, 0.0], np.float32)
    s = RangeStats.of(x)
    assert (s.nonfinite, s.min, s.max, s.zeros) == (3, -3.0, 1.0, 1)
    assert s.fraction_above(2.0) == pytest.approx(4 / 7)  # -3 and the three nonfinite
    assert s.fraction_below(0.01) == pytest.approx(1 / 7)  # 0.001 (zeros are not counted)
    empty = RangeStats.of(np.array([], np.float32))
    assert (empty.count, empty.max_abs, empty.percentile(99)) == (0, 0.0, 0.0)


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


def test_to_dict_has_the_percentiles_and_histogram():
    d = RangeStats.of(_values()).to_dict()
    assert set(d["percentiles_abs"]) == {"p99", "p99.9", "p99.99"}
    assert all(isinstance(k, str) for k in d["log2_histogram"])


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
