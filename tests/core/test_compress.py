"""compress end to end: on the embedded digits CNN (fast) and on the real zoo models (slow)."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ristretto_onnx import zoo
from ristretto_onnx.compress import compress
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.ops import is_quantize_sim, node_format


def plain_top1(model_path, dataset) -> float:
    """Independent check: stock onnxruntime, no ristretto code in the loop."""
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    hits = n = 0
    for x, y in dataset.batches(500):
        hits += int((sess.run(None, {name: x})[0].argmax(1) == y).sum())
        n += len(y)
    return hits / n


@pytest.fixture(scope="module")
def digits():
    return zoo.resolve_model("zoo:digits-cnn"), zoo.model_dataset("digits-cnn", "test"), zoo.model_dataset("digits-cnn", "calib")


def test_compress_digits_dfp_holds_the_tolerance_and_the_written_model_agrees(digits, tmp_path):
    model, test, calib = digits
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    r = compress(str(model), test, calib=calib, scheme="dfp", tolerance=0.01)
    out, rep = r.save(tmp_path / "d.onnx")
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before
    assert r.report.baseline == pytest.approx(0.984)
    assert r.report.drop <= 0.01 + 1e-9
    assert plain_top1(out, test) == pytest.approx(r.report.final, abs=1e-12)
    m = onnx.load(out)
    onnx.checker.check_model(m)
    fmts = [node_format(n)[0] for n in m.graph.node if is_quantize_sim(n)]
    assert fmts and max(f.bits for f in fmts) <= 8
    assert r.report.weight_bytes < r.report.weight_bytes_fp32 / 4
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["ristretto.compress"])["scheme"] == "dfp"
    report = json.loads(rep.read_text())
    assert report["final"] == r.report.final and report["evaluations"] > 0
    assert set(report["categories"]) == {"activations", "conv_weights", "fc_weights"}


@pytest.mark.parametrize("scheme", ["fixed", "minifloat", "pow2"])
def test_compress_other_schemes_on_digits(digits, scheme):
    model, test, calib = digits
    r = compress(str(model), test, calib=calib, scheme=scheme, tolerance=0.02)
    assert r.report.drop <= 0.02 + 1e-9
    # pow2 weights may be per channel (compress's default --weight-granularity auto): one Pow2 each
    kinds = {type(f.formats[0] if f.kind == "per-channel" else f).__name__ for f in r.plan.values() if f is not None}
    assert kinds == {"fixed": {"Fixed"}, "minifloat": {"Minifloat"}, "pow2": {"Pow2"}}[scheme]
    if scheme == "pow2":  # activations stay in float, weights are powers of two
        assert all(r.plan[g.group] is None for g in r.report.groups if g.role != "weights")


def test_layer_granularity_uses_no_more_weight_bits_than_groups(digits):
    model, test, calib = digits
    g = compress(str(model), test, calib=calib, scheme="dfp", tolerance=0.01)
    layer = compress(str(model), test, calib=calib, scheme="dfp", tolerance=0.01, granularity="layer")
    assert layer.report.weight_bytes <= g.report.weight_bytes and layer.report.drop <= 0.01 + 1e-9


def test_auto_keeps_the_smallest_scheme_that_holds(digits):
    model, test, calib = digits
    r = compress(str(model), test, calib=calib, scheme="auto", tolerance=0.01)
    tried = r.report.schemes_tried
    assert set(tried) == {"dfp", "fixed", "minifloat", "pow2"}
    holding = {k: v["weight_bytes"] for k, v in tried.items() if v["holds"]}
    assert r.report.scheme in holding and tried[r.report.scheme]["weight_bytes"] == min(holding.values())


def test_relative_tolerance_and_fidelity_without_labels(digits):
    model, test, _ = digits
    x = np.concatenate([b for b, _ in test.batches(500)])
    r = compress(str(model), x, scheme="dfp", tolerance=0.02, tolerance_mode="relative", metric="fidelity")
    assert r.report.baseline == 1.0 and r.report.final >= 0.98


def test_bad_options_are_clear_errors(digits):
    model, test, _ = digits
    with pytest.raises(RistrettoError, match="unknown scheme"):
        compress(str(model), test, scheme="int4")
    with pytest.raises(RistrettoError, match="needs labels"):
        compress(str(model), np.zeros((4, 1, 8, 8), np.float32), metric="top1")


def test_cli_main_command_runs_on_the_embedded_default(tmp_path):
    out = tmp_path / "digits.onnx"  # README's first command: an output in the current folder
    r = subprocess.run([sys.executable, "-m", "ristretto_onnx", "compress", "zoo:digits-cnn", str(out), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert "scheme dfp: top1 0.9840 ->" in r.stdout


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_one_argument_is_a_usage_error_and_never_touches_the_file(tmp_path):
    """Issue 10: ``compress victim.onnx`` once overwrote the user's model with the digits CNN."""
    victim = tmp_path / "victim.onnx"
    victim.write_bytes(zoo.resolve_model("zoo:digits-cnn").read_bytes())
    before = _sha256(victim)
    r = subprocess.run([sys.executable, "-m", "ristretto_onnx", "compress", str(victim)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert _sha256(victim) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.onnx"]


def test_cli_existing_output_needs_force(tmp_path):
    out = tmp_path / "o.onnx"
    out.write_bytes(b"precious")
    args = [sys.executable, "-m", "ristretto_onnx", "compress", "zoo:digits-cnn", str(out), "-q"]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 2 and "--force" in r.stderr and "Traceback" not in r.stderr
    assert out.read_bytes() == b"precious" and not out.with_suffix(".json").exists()
    r = subprocess.run(args + ["--force"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() != b"precious"


def test_cli_bad_input_leaves_no_output(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    out = tmp_path / "o.onnx"
    r = subprocess.run([sys.executable, "-m", "ristretto_onnx", "compress", str(bad), str(out),
                        "--data", "zoo:digits-test"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not out.exists() and not out.with_suffix(".json").exists()


def _independent_top1(path, dataset) -> float:
    return plain_top1(path, dataset)


@pytest.mark.slow
def test_lenet_dfp_reaches_the_thesis_widths(zoo_env, tmp_path):
    """Thesis table 5.2: LeNet at 4-bit weights and outputs within a point (98.72 % untuned)."""
    test = zoo.model_dataset("lenet-mnist", "test")
    calib = zoo.model_dataset("lenet-mnist", "calib").subset(500)
    r = compress(str(zoo.resolve_model("zoo:lenet-mnist")), test, calib=calib, scheme="dfp", tolerance=0.01)
    out, _ = r.save(tmp_path / "lenet.onnx")
    cats = r.report.categories
    assert cats["conv_weights"]["bits"] <= 4 and cats["fc_weights"]["bits"] <= 4
    assert 4 <= cats["activations"]["bits"] <= 8
    top1 = _independent_top1(out, test)
    assert r.report.baseline - top1 <= 0.01 + 1e-9
    assert top1 == pytest.approx(r.report.final, abs=1e-12)


@pytest.mark.slow
def test_resnet20_dfp_at_8_bits_or_fewer_within_a_point(zoo_env, tmp_path):
    test = zoo.model_dataset("resnet20-cifar10", "test")
    calib = zoo.model_dataset("resnet20-cifar10", "calib").subset(500)
    r = compress(str(zoo.resolve_model("zoo:resnet20-cifar10")), test, calib=calib, scheme="dfp", tolerance=0.01)
    out, _ = r.save(tmp_path / "r20.onnx")
    assert all(g.bits <= 8 for g in r.report.groups if g.format is not None)
    assert all(g.format is not None for g in r.report.groups if g.role != "bias")
    top1 = _independent_top1(out, test)
    assert top1 == pytest.approx(r.report.final, abs=1e-12)
    assert 0.8103 - top1 <= 0.01 + 1e-9
    # activation formats change without a new session; each weight assignment has its own
    assert r.report.sessions_built < r.report.plans_scored
    # issue 14: the cheaper search (sequential scoring, provisional category widths) costs at most
    # 8 full passes over the data (14.5 before) and loses neither bits nor accuracy (7/7/4, 80.30 %)
    cats = r.report.categories
    widths = [cats[c]["bits"] for c in ("activations", "conv_weights", "fc_weights")]
    assert all(w <= b for w, b in zip(widths, (7, 7, 4)))
    # measured: 7/6/4 at 80.24 % with unsigned activation codes (issue 15), 7/7/4 at 80.30 % signed,
    # 7/7/4 at 80.60 % (7.3 evaluations, 14 sessions) with per-layer weight granularity by default
    assert widths != [7, 7, 4] or top1 >= 0.8030 - 1e-9
    assert r.report.evaluations <= 8.0
    assert r.report.sessions_built <= 14
    final = [t for t in r.report.trials if t.stage == "combine" and t.accepted]
    assert final and final[-1].n == 10000 and final[-1].value == r.report.final  # accepted on the full set
