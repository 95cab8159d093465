"""quantize(): one configuration per scheme, the formats compress would pick at that width."""

from __future__ import annotations

import numpy as np
import pytest

from ristretto_onnx.data import load_dataset
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.compress import CompressOptions, build_context
from ristretto_onnx.formats import Fixed, Minifloat, Pow2
from ristretto_onnx.range_rules import dfp_format
from ristretto_onnx.passes.load import load_model
from ristretto_onnx.passes.pipeline import prepare
from ristretto_onnx.quantize import QuantizeOptions, quantize
from ristretto_onnx.range_rules import frac_bits
from ristretto_onnx.ranges import group_ranges, measure_groups
from ristretto_onnx.schemes import MinifloatScheme, StaticFixedPoint, make_scheme, plan_for
from ristretto_onnx.stats import RangeStats, category_groups
from ristretto_onnx.runtime.session import create_session
from tests import builders as synth


@pytest.fixture(scope="module")
def lenet_like():
    m = synth.flatten_gemm()
    x = synth.sample_input(m, batch=64, scale=2.0)
    y = create_session(m).run(None, {"x": x})[0].argmax(1)  # labels = the FP32 predictions
    return m, load_dataset(x, labels=y)


def test_dfp_gives_every_group_eq_5_2_on_its_measured_range_with_the_max_rule(lenet_like):
    m, data = lenet_like
    # the thesis's rule with signed codes everywhere (ufixed after ReLUs: tests/passes/test_nonnegative.py)
    r = quantize(m, QuantizeOptions(scheme="dfp", bits=8, calib_size=64, range_rule="max", unsigned=False,
                                    round_once=False), data)
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


def test_the_mse_range_rule_is_compress_default_and_quantize_chooses(lenet_like):
    m, data = lenet_like
    r = quantize(m, QuantizeOptions(scheme="dfp", bits=4, calib_size=64, unsigned=False, round_once=False,
                                    range_rule="mse"), data)
    assert CompressOptions().range_rule == "mse" and QuantizeOptions(scheme="dfp", bits=4).range_rule == "auto"
    assert QuantizeOptions(scheme="fixed", bits=8).range_rule == "mse"  # one rule there: nothing to choose
    chosen = quantize(m, QuantizeOptions(scheme="dfp", bits=4, calib_size=64), data).options.range_rule
    assert chosen in ("mse", "max")
    for gid, fmt in r.plan.items():
        if fmt is not None:
            layer_output = gid.endswith("outputs")
            assert fmt == Fixed(4, frac_bits(r.ranges[gid], 4, "mse", layer_output=layer_output)), gid


@pytest.mark.parametrize("rounding, models", [("nearest", 5), ("auto", 8)])
def test_the_defaults_run_each_model_once_on_the_scored_images(lenet_like, monkeypatch, rounding, models):
    """``--range-rule auto``, ``--bias-correction auto`` and ``--weight-rounding auto`` compare with
    the same FP32 reference on the same images, and the chosen rule's plan is bias correction's
    "none" candidate: each of these models runs once (the FP32 model, each rule's plan, each
    correction of each weight rounding), whatever is chosen."""
    import hashlib

    from ristretto_onnx import quantize as q

    m, data = lenet_like
    runs = []
    real = q._outputs
    monkeypatch.setattr(q, "_outputs", lambda model, batches, threads: runs.append(hashlib.sha256(
        model.SerializeToString(deterministic=True)).digest()) or real(model, batches, threads))
    r = quantize(m, QuantizeOptions(scheme="dfp", bits=4, calib_size=64, weight_rounding=rounding), data)
    assert r.bias_correction in ("applied", "outputs", "rejected")
    # FP32, mse, max, and the two corrections (the winning rule's plan is not run again); with
    # ``auto`` also the adaptively rounded weights, uncorrected and with each correction
    assert len(runs) == len(set(runs)) == models


def test_weight_and_activation_bits_and_bias(lenet_like):
    m, data = lenet_like
    r = quantize(m, QuantizeOptions(scheme="dfp", weight_bits=4, act_bits=12, quantize_bias=True), data)
    assert {f.bits for g, f in r.plan.items() if g.endswith(("weights", "bias"))} == {4}
    assert {f.bits for g, f in r.plan.items() if g.endswith(("inputs", "outputs"))} == {12}


def _compress_first_stage(m, data, scheme, bits):
    """Compress's candidates at ``bits``, each category scored alone; the first within one
    standard error of the best is kept (a split that saturates more must be clearly better)."""
    ctx = build_context(m, data, options=CompressOptions(calib_size=len(data)))
    chosen = {}
    for cat in scheme.categories:
        groups = category_groups(ctx.ranges, cat)
        cands = scheme.variants(groups, bits)
        values = [ctx.scorer.score(plan_for(scheme, ctx.ranges, {cat: bits}, {cat: v})).value for v in cands]
        top = max(values)
        se = np.sqrt(max(top * (1 - top), 1 / ctx.scorer.n) / ctx.scorer.n)
        chosen[cat] = scheme.formats(groups, bits, next(v for v, s in zip(cands, values) if s >= top - se))
    return chosen


def test_minifloat_is_what_compress_picks_at_that_width(lenet_like):
    m, data = lenet_like
    r = quantize(m, QuantizeOptions(scheme="minifloat", bits=6, score_size=64), data)
    expected = _compress_first_stage(m, data, MinifloatScheme(), 6)
    for cat, formats in expected.items():
        for gid, fmt in formats.items():
            assert r.plan[gid] == fmt, gid
    assert {s.category for s in r.variant_search} == set(expected)
    assert all(isinstance(f, Minifloat) for g, f in r.plan.items() if not g.endswith("bias"))


def test_fixed_is_what_compress_picks_at_that_width(lenet_like):
    m, data = lenet_like
    r = quantize(m, QuantizeOptions(scheme="fixed", bits=6, score_size=64), data)
    expected = _compress_first_stage(m, data, StaticFixedPoint(headroom=1), 6)  # quantize: 1 bit headroom
    for cat, formats in expected.items():
        assert {r.plan[g] for g in formats} == set(formats.values()) and len(set(formats.values())) == 1, cat
    side = r.sidecar()["variant_search"]
    assert side["metric"] == "top1" and sum(s["chosen"] for s in side["scores"]) == 3


def test_pow2_quantizes_weights_only_and_needs_no_data(lenet_like):
    m, _ = lenet_like
    r = quantize(m, QuantizeOptions(scheme="pow2", pow2=Pow2(-6, 0)))
    assert {g for g, f in r.plan.items() if f is not None} == {"conv/weights", "fc1/weights", "fc2/weights"}
    assert set(r.plan.values()) - {None} == {Pow2(-6, 0)}
    assert quantize(m, QuantizeOptions(scheme="pow2")).plan["conv/weights"] == Pow2(-8, -1)  # the thesis's


def test_pow2_with_a_width_places_a_window_at_each_layers_range_as_compress_does(lenet_like):
    m, _ = lenet_like
    r = quantize(m, QuantizeOptions(scheme="pow2", bits=4))
    prepared = prepare(m)
    for gid in ("conv/weights", "fc1/weights", "fc2/weights"):
        top = round(np.log2(group_ranges(prepared.float_model, prepared.layers)[gid].max_abs))
        assert r.plan[gid] == Pow2(top - 7, top), gid  # 2**(4-1) exponents
    assert r.plan == plan_for(make_scheme("pow2"), measure_groups(prepared.float_model, prepared.layers),
                              {"conv_weights": 4, "fc_weights": 4})


def test_fixed_without_labels_scores_agreement_and_wide_formats_tie_to_more_headroom(lenet_like):
    m, data = lenet_like
    unlabelled = load_dataset(np.stack([x for x, _ in data.batches(64)][0]))
    r = quantize(m, QuantizeOptions(scheme="fixed", bits=32, score_size=16), unlabelled)
    assert r.metric == "fidelity" and all(s.value == 1.0 for s in r.variant_search)
    for cat in {s.category for s in r.variant_search}:
        tried = [s for s in r.variant_search if s.category == cat]
        assert tried[0].chosen  # lossless splits tie; most integer bits (headroom) wins
    x = next(unlabelled.batches(16))[0]
    ref = create_session(m).run(None, {"x": x})[0]
    got = create_session(r.model).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5


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


@pytest.mark.slow
def test_minifloat_8_bit_on_resnet20_keeps_its_accuracy(zoo_env):
    """Eq. 6.2 on the network's largest range left ResNet-20 at 10 % top-1; the histogram rule
    that compress uses keeps it within a few points of FP32 (81.0 % on the whole test set)."""
    r = quantize("zoo:resnet20-cifar10", QuantizeOptions(scheme="minifloat", bits=8, calib_size=200,
                                                         score_size=100))
    test = load_dataset("zoo:cifar10-test").take(1000)
    session = create_session(r.model)
    name = session.get_inputs()[0].name
    hits = [np.argmax(session.run(None, {name: x})[0], axis=1) == y for x, y in test.batches(250)]
    assert np.mean(np.concatenate(hits)) >= 0.75
    assert {s.category for s in r.variant_search} == {"activations", "conv_weights", "fc_weights"}


def test_weight_rounding_candidates_share_one_fp32_means_pass(lenet_like, monkeypatch):
    """``--weight-rounding auto`` corrects both candidates' biases from the same FP32 input means:
    one pass over the calibration images, not one per candidate."""
    from ristretto_onnx import quantize as q

    m, data = lenet_like
    calls = []
    real = q.input_means
    monkeypatch.setattr(q, "input_means", lambda *a, **k: calls.append(1) or real(*a, **k))
    r = quantize(m, QuantizeOptions(scheme="dfp", bits=4, calib_size=64, bias_correction="weights",
                                    weight_rounding="auto"), data)
    assert r.bias_correction == "applied" and len(calls) == 1
