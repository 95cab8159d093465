"""quantize(): one configuration per scheme, on synthetic graphs with calibration arrays."""

from __future__ import annotations

import numpy as np
import pytest

from ristretto_onnx.data import load_dataset
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Fixed, Minifloat, Pow2, dfp_format, minifloat_format
from ristretto_onnx.passes.load import load_model
from ristretto_onnx.passes.pipeline import prepare
from ristretto_onnx.quantize import QuantizeOptions, SplitScore, quantize
from ristretto_onnx.ranges import group_ranges
from ristretto_onnx.runtime.calibrate import RangeStats
from ristretto_onnx.runtime.session import create_session
from tests.passes import synth


@pytest.fixture(scope="module")
def lenet_like():
    m = synth.flatten_gemm()
    x = synth.sample_input(m, batch=64, scale=2.0)
    y = create_session(m).run(None, {"x": x})[0].argmax(1)  # labels = the FP32 predictions
    return m, load_dataset(x, labels=y)


def test_dfp_gives_every_group_eq_5_2_on_its_measured_range(lenet_like):
    m, data = lenet_like
    # the thesis's rule with signed codes everywhere (ufixed after ReLUs: tests/passes/test_nonnegative.py)
    r = quantize(m, QuantizeOptions(scheme="dfp", bits=8, calib_size=64, unsigned=False, round_once=False), data)
    prepared = prepare(m)
    ranges = group_ranges(prepared.float_model, prepared.layers, data)
    for gid, fmt in r.plan.items():
        role = gid.rsplit("/", 1)[1]
        if role == "bias":
            assert fmt is None
        else:
            assert fmt == dfp_format(ranges[gid].max_abs, 8, layer_output=role == "outputs"), gid
    assert r.ranges["fc1/weights"].max_abs == ranges["fc1/weights"].max_abs
    assert set(r.sidecar()["formats"]) == set(prepared.layers.group_ids)


def test_weight_and_activation_bits_and_bias(lenet_like):
    m, data = lenet_like
    r = quantize(m, QuantizeOptions(scheme="dfp", weight_bits=4, act_bits=12, quantize_bias=True), data)
    assert {f.bits for g, f in r.plan.items() if g.endswith(("weights", "bias"))} == {4}
    assert {f.bits for g, f in r.plan.items() if g.endswith(("inputs", "outputs"))} == {12}


def test_minifloat_is_one_shared_format_from_the_largest_range(lenet_like):
    m, data = lenet_like
    r = quantize(m, QuantizeOptions(scheme="minifloat", bits=8), data)
    top = max(s.max_abs for g, s in r.ranges.items() if not g.endswith("bias"))
    assert {f for f in r.plan.values() if f is not None} == {minifloat_format(top, 8)}
    assert isinstance(next(iter(r.plan.values())), Minifloat)


def test_pow2_quantizes_weights_only_and_needs_no_data(lenet_like):
    m, _ = lenet_like
    r = quantize(m, QuantizeOptions(scheme="pow2", pow2=Pow2(-6, 0)))
    assert {g for g, f in r.plan.items() if f is not None} == {"conv/weights", "fc1/weights", "fc2/weights"}
    assert set(r.plan.values()) - {None} == {Pow2(-6, 0)}


def test_fixed_search_tries_splits_and_keeps_the_best(lenet_like):
    m, data = lenet_like
    r = quantize(m, QuantizeOptions(scheme="fixed", bits=8, score_size=32), data)
    assert len(r.fixed_search) >= 3
    best = max(r.fixed_search, key=lambda s: s.key)
    assert {f for f in r.plan.values() if f is not None} == {Fixed(8, 8 - best.int_bits)}
    # the first split has one integer bit of headroom above the calibration maximum
    top = max(s.max_abs for g, s in r.ranges.items() if not g.endswith("bias"))
    assert r.fixed_search[0].int_bits == int(np.ceil(np.log2(top))) + 2
    assert all(s.top1 is not None for s in r.fixed_search)


def test_fixed_without_labels_scores_agreement_and_wide_formats_tie_to_more_headroom(lenet_like):
    m, data = lenet_like
    unlabelled = load_dataset(np.stack([x for x, _ in data.batches(64)][0]))
    r = quantize(m, QuantizeOptions(scheme="fixed", bits=32, score_size=16), unlabelled)
    assert all(s.top1 is None for s in r.fixed_search)
    best = max(r.fixed_search, key=lambda s: s.key)
    assert best.int_bits == r.fixed_search[0].int_bits  # lossless splits tie; most headroom wins
    x = next(unlabelled.batches(16))[0]
    ref = create_session(m).run(None, {"x": x})[0]
    got = create_session(r.model).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5


def test_split_score_order():
    good = SplitScore(4, (), 0.9, 0.95, 1e-3)
    assert good.key > SplitScore(5, (), 0.8, 0.99, 1e-9).key  # accuracy first
    assert SplitScore(6, (), 0.9, 0.95, 1e-12).key > SplitScore(5, (), 0.9, 0.95, 1e-13).key  # lossless tie


def test_forced_format_selection_and_exclusion():
    m = synth.flatten_gemm()
    r = quantize(m, QuantizeOptions(format="fixed:16:8", layers=("fc",), exclude=("fc2",)))
    quantized = {g for g, f in r.plan.items() if f is not None}
    assert quantized == {"fc1/inputs", "fc1/weights", "fc1/outputs"}
    assert r.selected == ("fc1",)
    assert r.sidecar()["formats"]["conv/weights"] is None


def test_option_errors():
    with pytest.raises(RistrettoError, match="give a --scheme"):
        QuantizeOptions()
    with pytest.raises(RistrettoError, match="unknown scheme"):
        QuantizeOptions(scheme="int8", bits=8)
    with pytest.raises(RistrettoError, match="needs --bits"):
        QuantizeOptions(scheme="dfp")
    with pytest.raises(RistrettoError, match="between 2 and 32"):
        QuantizeOptions(scheme="dfp", bits=40)
    with pytest.raises(RistrettoError, match="needs calibration data"):
        quantize(synth.flatten_gemm(), QuantizeOptions(scheme="dfp", bits=8))


def test_prepared_models_are_reused_and_not_modified(lenet_like):
    m, data = lenet_like
    prepared = prepare(m)
    before = prepared.annotated.SerializeToString()
    a = quantize(prepared, QuantizeOptions(scheme="dfp", bits=8), data)
    b = quantize(prepared, QuantizeOptions(scheme="dfp", bits=16), data)
    assert prepared.annotated.SerializeToString() == before
    assert a.plan != b.plan
    assert isinstance(a.ranges["conv/inputs"], RangeStats)
    assert load_model(a.model)  # a valid model
